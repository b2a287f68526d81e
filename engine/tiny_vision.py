"""Tiny random vision folders (image_tokenizer/, decoder/, decoder-turbo/, vae/) in the official
layout, with official config field names and weight keys, for tests on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file
from torch import Tensor, nn

from engine.decoder import SigVQ, build_dit, dit_config
from engine.vision import ImageTokenizer, ImageTokenizerConfig

SIGVQ_WIDTH = 32

TOKENIZER_CONFIG = {
    "vision_config": {
        "hidden_size": 32,
        "depth": 2,
        "num_heads": 2,
        "intermediate_size": 64,
        "patch_size": 16,
        "image_size": 256,
        "in_channels": 3,
        "hidden_act": "gelu",
        "attention_bias": True,
        "layer_norm_eps": 1e-6,
        "spatial_merge_size": 1,
    },
    "vq_config": {
        "embed_dim": 16,
        "num_embeddings": 16384,
        "latent_channels": 32,
        "in_channels": 3,
    },
}

PREPROCESSOR_CONFIG = {  # the real checkpoint's file
    "patch_size": 16,
    "temporal_patch_size": 1,
    "merge_size": 1,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "do_rescale": True,
    "rescale_factor": 0.00392156862745098,
    "do_normalize": True,
    "do_resize": False,
    "min_pixels": 262144,
    "max_pixels": 4194304,
    "resample": 3,
    "image_processor_type": "GlmImageImageProcessor",
    "processor_class": "GlmImageProcessor",
}

DECODER_CONFIG = {
    "_class_name": "ZImageTransformer2DModel",
    "all_patch_size": [2],
    "all_f_patch_size": [1],
    "in_channels": 16,
    "dim": 64,
    "n_layers": 2,
    "n_refiner_layers": 1,
    "n_heads": 2,
    "n_kv_heads": 2,
    "norm_eps": 1e-5,
    "qk_norm": True,
    "cap_feat_dim": SIGVQ_WIDTH,
    "rope_theta": 256.0,
    "t_scale": 1000.0,
    "axes_dims": [8, 12, 12],
    "axes_lens": [1536, 512, 512],
}

VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 8, 8, 8],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 16,
    "norm_num_groups": 4,
    "sample_size": 64,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "latents_mean": None,
    "latents_std": None,
    "force_upcast": True,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "mid_block_add_attention": True,
}


def write_tiny_vision(root: Path, seed: int = 0) -> None:
    """Write the four vision folders under root; the same seed gives the same bytes."""
    root = Path(root)
    generator = torch.Generator().manual_seed(seed)

    folder = _folder(root / "image_tokenizer")
    _write_json(folder / "config.json", TOKENIZER_CONFIG)
    _write_json(folder / "preprocessor_config.json", PREPROCESSOR_CONFIG)
    flat = TOKENIZER_CONFIG["vision_config"] | TOKENIZER_CONFIG["vq_config"]
    flat["in_channels"] = 3
    with torch.device("meta"):
        tokenizer = ImageTokenizer(ImageTokenizerConfig(**flat))
    state = random_state(tokenizer, generator)
    save_file({f"model.{k}": v for k, v in state.items()}, folder / "model.safetensors")
    with torch.device("meta"):
        sigvq = SigVQ(16384, SIGVQ_WIDTH)
    torch.save(random_state(sigvq, generator), folder / "sigvq_embedding.pt")

    for name in ("decoder", "decoder-turbo"):
        folder = _folder(root / name)
        _write_json(folder / "config.json", DECODER_CONFIG)
        with torch.device("meta"):
            dit = build_dit(dit_config(DECODER_CONFIG, SIGVQ_WIDTH))
        state = random_state(dit, generator)
        renamed = {_official_dit_key(k): v for k, v in state.items()}
        save_file(renamed, folder / "model.safetensors")

    folder = _folder(root / "vae")
    _write_json(folder / "config.json", VAE_CONFIG)
    with torch.device("meta"):
        vae = AutoencoderKL(**{k: v for k, v in VAE_CONFIG.items() if not k.startswith("_")})
    save_file(random_state(vae, generator), folder / "diffusion_pytorch_model.safetensors")


def random_state(model: nn.Module, generator: torch.Generator, scale: float = 0.02) -> dict:
    """Fresh float32 tensors for every key: norm weights 1, the rest small Gaussian noise."""
    state: dict[str, Tensor] = {}
    for key, meta in model.state_dict().items():
        if meta.ndim == 1 and "norm" in key and key.endswith("weight"):
            state[key] = torch.ones(meta.shape)
        else:
            state[key] = torch.randn(meta.shape, generator=generator) * scale
    return state


def _official_dit_key(key: str) -> str:
    if key.startswith("cap_embedder."):
        return "semantic_embedder." + key[len("cap_embedder.") :]
    return key


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
