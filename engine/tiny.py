"""Writes a tiny random LLaDA2.0-Uni checkpoint in the official layout, for tests and demos.

    python -m engine.tiny OUT_DIR [--seed N] [--widths tiny|real] [--fp8]

Same files and names as the real model (config.json with every official field, a real
tokenizer.json with every special token, sharded safetensors with an index, and the vision
folders), only small. It loads through exactly the same code as the real 40 GB download.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from engine import text
from engine.backbone import BackboneConfig, expected_shapes

RESERVED_TOKENS = 128  # grid sizes up to 127 tokens per side
SPECIAL_TOKENS = [
    "<|endoftext|>",
    text.MASK,
    "<role>",
    "</role>",
    "<|role_end|>",
    text.IMAGE_START,
    text.IMAGE_END,
    text.BEGIN_IMAGE,
    text.UNCONDITION,
] + [text.reserved(n) for n in range(RESERVED_TOKENS)]

CORPUS = [
    "You are a text-to-image generation assistant.",
    "You are a multimodal understanding assistant. You are an image editing assistant.",
    "SYSTEM HUMAN ASSISTANT thinking process",
    "A red fox sits in the snow under a blue sky. What is in this picture? Describe it.",
    "Make the sky orange. Remove the car. Add a hat to the cat. The photo shows a street.",
]


def tiny_config(image_token_offset: int, pad_token_id: int) -> BackboneConfig:
    """Three small layers (one dense, two MoE with 16 experts in 4 groups), real vocab split."""
    return BackboneConfig(
        vocab_size=image_token_offset + 16384,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=16,
        num_shared_experts=1,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=2.5,
        moe_intermediate_size=32,
        first_k_dense_replace=1,
        rms_norm_eps=1e-6,
        rope_theta=600000.0,
        partial_rotary_factor=0.5,
        max_position_embeddings=8192,
        pad_token_id=pad_token_id,
        image_token_offset=image_token_offset,
    )


def official_config_json(config: BackboneConfig) -> dict:
    """config.json with every field of the official file (facts §1), values from `config`."""
    raw = asdict(config)
    return {
        "architectures": ["LLaDA2MoeModelLM"],
        "auto_map": {
            "AutoConfig": "configuration_llada2uni_moe.LLaDA2MoeConfig",
            "AutoModel": "modeling_llada2uni_moe.LLaDA2MoeModelLM",
            "AutoModelForCausalLM": "modeling_llada2uni_moe.LLaDA2MoeModelLM",
        },
        "model_type": "llada2_moe",
        "transformers_version": "4.51.0",
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": config.rope_theta,
            "partial_rotary_factor": config.partial_rotary_factor,
        },
        "use_cache": False,
        "sliding_window": None,
        "output_router_logits": False,
        **{k: v for k, v in raw.items() if k != "tie_word_embeddings"},
    }


def write_tokenizer(folder: Path) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=480,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, indent=2)
    )
    return tokenizer


def random_weights(config: BackboneConfig, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in expected_shapes(config).items():
        if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
            tensor = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        elif name.endswith("expert_bias"):
            tensor = 0.05 * torch.randn(shape, generator=generator)
        else:  # std ~ 1/sqrt(fan-in), so activations stay in range at any width
            std = min(0.1, shape[-1] ** -0.5)
            tensor = (std * torch.randn(shape, generator=generator)).to(torch.bfloat16)
        weights[name] = tensor.to(torch.bfloat16)
    return weights


def write_shards(folder: Path, weights: dict[str, torch.Tensor], shards: int = 3) -> None:
    names = list(weights)
    per = -(-len(names) // shards)
    weight_map, total = {}, 0
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: weights[n].contiguous() for n in names[i * per : (i + 1) * per]}
        save_file(part, str(folder / file), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, file)
        total += sum(t.numel() * t.element_size() for t in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def to_fp8_experts(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Routed expert weights as the FP8 release stores them (facts §7): E4M3 with one fp32
    `weight_scale_inv` per 128x128 block (w = q * scale); every other tensor unchanged."""
    from engine.quant import FP8_BLOCK, FP8_SCALE_SUFFIX, is_fp8_expert

    out = {}
    for name, w in weights.items():
        if not is_fp8_expert(name):
            out[name] = w
            continue
        n, k = w.shape
        rows, cols = -(-n // FP8_BLOCK), -(-k // FP8_BLOCK)
        padded = torch.zeros(rows * FP8_BLOCK, cols * FP8_BLOCK)
        padded[:n, :k] = w.float()
        blocks = padded.view(rows, FP8_BLOCK, cols, FP8_BLOCK)
        scale = (blocks.abs().amax(dim=(1, 3)) / 448).clamp(min=1e-12)  # E4M3's largest value
        full = scale.repeat_interleave(FP8_BLOCK, 0).repeat_interleave(FP8_BLOCK, 1)[:n, :k]
        out[name] = (w.float() / full).to(torch.float8_e4m3fn)
        out[name + FP8_SCALE_SUFFIX] = scale
    return out


def write_tiny_checkpoint(
    folder: Path, seed: int = 0, widths: str = "tiny", fp8: bool = False
) -> Path:
    """Write every part of a random checkpoint into `folder` and return it.

    widths "tiny" is for tests; "real" has the real backbone widths (hidden 2048, 256 experts of
    512, top-8, the real vocabulary) but only 2 layers, for benchmarks (about 3 GB).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tokenizer(folder)
    eos = tokenizer.token_to_id("<|endoftext|>")
    if widths == "real":
        config = replace(BackboneConfig.real(), num_hidden_layers=2, pad_token_id=eos)
    else:
        config = tiny_config(512, eos)
    assert tokenizer.get_vocab_size() <= config.image_token_offset
    raw_config = official_config_json(config)
    weights = random_weights(config, seed)
    if fp8:  # as LLaDA2.0-Uni-FP8: experts in block FP8, the flag in config.json
        raw_config["use_fp8_experts"] = True
        weights = to_fp8_experts(weights)
    (folder / "config.json").write_text(json.dumps(raw_config, indent=2))
    write_shards(folder, weights)
    if widths == "tiny" and importlib.util.find_spec("engine.tiny_vision"):
        from engine.tiny_vision import write_tiny_vision

        write_tiny_vision(folder, seed)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--widths", choices=("tiny", "real"), default="tiny", help="real: 2 layers, ~3 GB"
    )
    parser.add_argument(
        "--fp8", action="store_true", help="routed experts in block FP8, as the FP8 release"
    )
    args = parser.parse_args()
    print(write_tiny_checkpoint(args.out_dir, args.seed, args.widths, args.fp8))


if __name__ == "__main__":
    main()
