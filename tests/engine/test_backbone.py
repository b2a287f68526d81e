"""Backbone on the tiny checkpoint: strict loading, KV cache exactness, routing, real shapes."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.backbone import (
    Backbone,
    BackboneConfig,
    Gate,
    KVCache,
    expected_shapes,
    load_backbone,
)
from engine.errors import BadCheckpoint
from engine.sampler import Layout


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_backbone(tiny_checkpoint, dtype=torch.float32)


def test_every_checkpoint_tensor_is_loaded(tiny_checkpoint, model):
    index = json.loads((tiny_checkpoint / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) >= 2
    for file in files:
        for name, tensor in load_file(tiny_checkpoint / file).items():
            if ".experts." in name and name.split(".")[5].isdigit():
                layer, expert, proj = (
                    name.split(".")[2],
                    int(name.split(".")[5]),
                    name.split(".")[6],
                )
                ours = model.get_parameter(f"model.layers.{layer}.mlp.experts.{proj}")[expert]
            else:
                ours = model.state_dict()[name]
            assert torch.equal(ours, tensor.float()), name


def test_bf16_load_allocates_once_in_the_final_dtypes(tiny_checkpoint):
    model = load_backbone(tiny_checkpoint, dtype=torch.bfloat16)
    gate = model.model.layers[1].mlp.gate
    assert gate.weight.dtype == gate.expert_bias.dtype == torch.float32  # the router stays fp32
    assert model.inv_freq.dtype == torch.float32
    assert model.lm_head.weight.dtype == model.model.layers[1].mlp.experts.up_proj.dtype
    assert model.lm_head.weight.dtype == torch.bfloat16
    r = model.config.rotary_dim
    want = model.config.rope_theta ** -(torch.arange(0, r, 2, dtype=torch.float64) / r)
    assert torch.allclose(model.inv_freq.double(), want, rtol=1e-6)


def _copy_without(src, dst, drop=None, add=None):
    dst.mkdir()
    for path in src.iterdir():
        if path.is_file():
            (dst / path.name).write_bytes(path.read_bytes())
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    file = index["weight_map"][drop] if drop else next(iter(index["weight_map"].values()))
    tensors = load_file(dst / file)
    if drop:
        del tensors[drop]
    if add:
        tensors[add] = torch.zeros(3)
    save_file(tensors, dst / file)


def test_missing_expert_tensor_is_named(tiny_checkpoint, tmp_path):
    name = "model.layers.2.mlp.experts.5.up_proj.weight"
    _copy_without(tiny_checkpoint, tmp_path / "m", drop=name)
    with pytest.raises(BadCheckpoint, match=r"missing tensor model\.layers\.2\.mlp\.experts\.5\."):
        load_backbone(tmp_path / "m", dtype=torch.float32)


def test_unknown_tensor_is_named(tiny_checkpoint, tmp_path):
    _copy_without(tiny_checkpoint, tmp_path / "m", add="model.layers.0.extra.weight")
    with pytest.raises(BadCheckpoint, match="model.layers.0.extra.weight"):
        load_backbone(tmp_path / "m", dtype=torch.float32)


def _full_logits(model, layout, hi, B):
    return model(layout.ids[:, :hi], layout.positions[:, :hi], layout.mask(0, hi, hi), last=B)


@pytest.mark.parametrize("prompt_length", [45, 64, 7])
def test_cached_and_uncached_logits_agree(model, prompt_length):
    B, g = 32, torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (prompt_length,), generator=g).tolist()
    init = torch.randint(0, vocab, (70,), generator=g)
    layout = Layout([prompt], init, mask_id=1, B=B)
    cache = KVCache(model.config, 1, layout.blocks * B, "cpu", torch.float32)
    first = layout.P // B
    if first:
        hi = first * B
        model(layout.ids[:, :hi], layout.positions[:, :hi], layout.mask(0, hi, hi), cache,
              store=True, last=0)  # fmt: skip
    for blk in range(first, layout.blocks):
        lo, hi = blk * B, (blk + 1) * B
        args = (layout.ids[:, lo:hi], layout.positions[:, lo:hi], layout.mask(lo, hi, hi))
        cached = model(*args, cache)
        full = _full_logits(model, layout, hi, B)
        assert (cached - full).abs().max() < 1e-4
        model(*args, cache, store=True, last=0)
    assert cache.length == layout.blocks * B


def test_padded_cfg_rows_are_finite_and_blind_to_their_padding(model):
    """A short CFG row, left-padded: finite logits, unaffected by pad contents or other rows."""
    B, g = 32, torch.Generator().manual_seed(2)
    long = torch.randint(0, 400, (80,), generator=g).tolist()
    other = torch.randint(0, 400, (80,), generator=g).tolist()
    short = torch.randint(0, 400, (12,), generator=g).tolist()
    init = torch.full((40,), 1)
    one, two = Layout([long, short], init, 1, B), Layout([other, short], init, 1, B)
    two.ids[1, :68] = torch.randint(0, 400, (68,), generator=g)  # garbage in the pad slots
    hi = one.blocks * B
    a = model(one.ids, one.positions, one.mask(0, hi, hi))
    b = model(two.ids, two.positions, two.mask(0, hi, hi))
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert (a[1, 68:] - b[1, 68:]).abs().max() < 1e-5
    assert (a[0] - b[0]).abs().max() > 1e-3  # the long rows differ, as they should


def test_block_mask_at_the_prompts_last_partial_block():
    layout = Layout([list(range(40))], torch.full((30,), 1), mask_id=1, B=32)
    mask = layout.mask(0, 96, 96)[0, 0]
    assert mask[35, :64].all() and not mask[35, 64:].any()  # prompt tail sees its whole block
    assert mask[50, 33:40].all()  # generated tokens see the prompt tail of their block
    assert mask[10, :32].all() and not mask[10, 32:].any()  # earlier prompt: no later block
    assert mask[70, :96].all()


def test_bias_picks_experts_but_does_not_weight_them():
    config = BackboneConfig.real()
    gate = Gate(config).requires_grad_(False)
    torch.nn.init.normal_(gate.weight, std=0.02, generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, config.hidden_size, generator=torch.Generator().manual_seed(1))
    weights0, chosen0 = gate(x)
    outsider = next(e for e in range(config.num_experts) if e not in chosen0[0])
    gate.expert_bias[outsider] = 10.0
    weights1, chosen1 = gate(x)
    assert outsider in chosen1[0] and outsider not in chosen0[0]
    scores = torch.sigmoid(x.float() @ gate.weight.float().T)
    picked = scores[0, chosen1[0]]
    expected = picked / picked.sum() * config.routed_scaling_factor
    assert torch.allclose(weights1[0], expected, atol=1e-6)
    assert abs(float(weights0.sum(-1)[0]) - 2.5) < 1e-5


def test_moe_computes_the_same_as_a_loop_over_experts(model):
    moe = model.model.layers[1].mlp
    x = torch.randn(2, 9, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    weights, chosen = moe.gate(x.reshape(-1, x.shape[-1]))
    expected = torch.zeros(18, model.config.hidden_size)
    for t, token in enumerate(x.reshape(-1, x.shape[-1])):
        for w, e in zip(weights[t], chosen[t]):
            ex = moe.experts
            h = torch.nn.functional.silu(ex.gate_proj[e] @ token) * (ex.up_proj[e] @ token)
            expected[t] += w * (ex.down_proj[e] @ h)
        expected[t] += moe.shared_experts(token)
    assert torch.allclose(moe(x).reshape(18, -1), expected, atol=1e-4)


def test_real_shapes_on_the_meta_device():
    config = BackboneConfig.real()
    with torch.device("meta"):
        model = Backbone(config)
    assert all(p.is_meta for p in model.parameters())
    ours = {n: tuple(p.shape) for n, p in model.named_parameters()}
    ours |= {n: tuple(b.shape) for n, b in model.named_buffers() if n != "inv_freq"}
    official = expected_shapes(config)
    assert official["model.layers.0.attention.query_key_value.weight"] == (3072, 2048)
    assert official["model.layers.7.mlp.experts.255.down_proj.weight"] == (2048, 512)
    assert official["lm_head.weight"] == (173568, 2048)
    assert len([n for n in official if ".experts." in n]) == 19 * 256 * 3
    for name, shape in official.items():
        if ".mlp.experts." in name:
            prefix, rest = name.split(".mlp.experts.")
            expert, proj, _ = rest.split(".")
            assert ours[f"{prefix}.mlp.experts.{proj}"][1:] == shape
            assert ours[f"{prefix}.mlp.experts.{proj}"][0] == 256
        else:
            assert ours[name] == shape, name
    assert set(ours) == set(expected_shapes(config, fused_experts=True))
    total = sum(p.numel() for p in model.parameters())
    assert 16.0e9 < total < 16.6e9
    assert model.config.rotary_dim == 64


def test_attention_matches_the_reference_formulas(model):
    """Fused QKV split (Q heads, then K, then V), QK RMSNorm before NeoX partial RoPE, query
    head h on KV head h // 2 (tiny: 4 heads, 2 KV heads), softmax over the allowed keys."""
    c, attn = model.config, model.model.layers[0].attention
    g = torch.Generator().manual_seed(4)
    L, H, G, d, r = 40, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.rotary_dim
    x = torch.randn(1, L, c.hidden_size, generator=g)
    positions = torch.arange(L)[None] + 5
    layout = Layout([list(range(L - 8))], torch.full((8,), 1), mask_id=1, B=32)
    mask = layout.mask(0, L, L)[:, :, :L, :L]
    freqs = positions[0, :, None].double() * c.rope_theta ** -(torch.arange(0, r, 2) / r)
    cos, sin = (
        torch.cat([freqs, freqs], -1).cos().float(),
        torch.cat([freqs, freqs], -1).sin().float(),
    )

    def norm(t, w):
        return w * t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + c.rms_norm_eps)

    def rope(t):  # [L, d]: rotate pairs (i, i + r/2) of the first r dims
        a, b = t[:, : r // 2], t[:, r // 2 : r]
        rot = torch.cat([a * cos[:, : r // 2] - b * sin[:, : r // 2],
                         b * cos[:, r // 2 :] + a * sin[:, r // 2 :]], -1)  # fmt: skip
        return torch.cat([rot, t[:, r:]], -1)

    qkv = (x[0] @ attn.query_key_value.weight.T).view(L, H + 2 * G, d)
    out = torch.zeros(L, H, d)
    for h in range(H):
        q = rope(norm(qkv[:, h], attn.query_layernorm.weight))
        k = rope(norm(qkv[:, H + h // (H // G)], attn.key_layernorm.weight))
        v = qkv[:, H + G + h // (H // G)]
        scores = (q @ k.T) / d**0.5
        scores = scores.masked_fill(~mask[0, 0], float("-inf"))
        out[:, h] = scores.softmax(-1) @ v
    want = out.reshape(L, H * d) @ attn.dense.weight.T
    emb = torch.cat([freqs, freqs], -1).float()
    got = attn(x, (emb.cos()[None], emb.sin()[None]), mask, None, 0, False)[0]
    assert (got - want).abs().max() < 1e-4


def test_fused_expert_layout_loads_the_same_model(tiny_checkpoint, tmp_path, model):
    """The alternative official layout: experts.{gate,up,down}_proj stacked [E, ...]."""
    from engine.tiny import write_shards

    index = json.loads((tiny_checkpoint / "model.safetensors.index.json").read_text())
    tensors = {}
    for file in set(index["weight_map"].values()):
        tensors |= load_file(tiny_checkpoint / file)
    fused = {}
    for name, tensor in tensors.items():
        parts = name.split(".")
        if ".mlp.experts." in name and parts[5].isdigit():
            key = ".".join(parts[:5] + [parts[6]])
            fused.setdefault(key, {})[int(parts[5])] = tensor
        else:
            fused[name] = tensor
    for key, value in fused.items():
        if isinstance(value, dict):
            fused[key] = torch.stack([value[e] for e in sorted(value)])
    folder = tmp_path / "fused"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (folder / name).write_bytes((tiny_checkpoint / name).read_bytes())
    write_shards(folder, fused, shards=2)
    other = load_backbone(folder, dtype=torch.float32)
    for name, tensor in model.state_dict().items():
        assert torch.equal(other.state_dict()[name], tensor), name
