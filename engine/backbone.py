"""The LLaDA2-MoE backbone of LLaDA2.0-Uni: config, layers, KV cache, forward pass and loading.

Shapes in comments: B batch, L tokens in this call, S keys (cached + current), D hidden size,
H query heads, G key/value heads, d head dim, E experts, K experts per token, V vocabulary.
Facts and sources: shared/notes/backbone_facts.md §1-3.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn

from engine.errors import BadCheckpoint


@dataclass(frozen=True)
class BackboneConfig:
    """Field names match the checkpoint's config.json; fields without a default are required."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_experts: int
    num_shared_experts: int
    num_experts_per_tok: int
    n_group: int
    topk_group: int
    routed_scaling_factor: float
    moe_intermediate_size: int
    first_k_dense_replace: int
    rms_norm_eps: float
    rope_theta: float
    partial_rotary_factor: float
    max_position_embeddings: int
    pad_token_id: int
    image_token_offset: int
    use_qk_norm: bool = True
    use_qkv_bias: bool = False
    use_bias: bool = False
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    torch_dtype: str = "bfloat16"

    @classmethod
    def required_fields(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.default is MISSING]

    @classmethod
    def from_dict(cls, raw: dict) -> BackboneConfig:
        raw = dict(raw)
        if "rope_theta" not in raw and "rope_theta" in (raw.get("rope_parameters") or {}):
            raw["rope_theta"] = raw["rope_parameters"]["rope_theta"]
        if "partial_rotary_factor" not in raw:
            raw["partial_rotary_factor"] = (raw.get("rope_parameters") or {}).get(
                "partial_rotary_factor", 1.0
            )
        missing = [name for name in cls.required_fields() if name not in raw]
        if missing:
            raise BadCheckpoint(f"config.json lacks the field '{missing[0]}'.")
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})

    @classmethod
    def from_checkpoint(cls, folder: Path) -> BackboneConfig:
        return cls.from_dict(json.loads((Path(folder) / "config.json").read_text()))

    @classmethod
    def real(cls) -> BackboneConfig:
        """LLaDA2.0-Uni's own config.json values (facts §1)."""
        return cls(
            vocab_size=173568,
            hidden_size=2048,
            intermediate_size=5120,
            num_hidden_layers=20,
            num_attention_heads=16,
            num_key_value_heads=4,
            head_dim=128,
            num_experts=256,
            num_shared_experts=1,
            num_experts_per_tok=8,
            n_group=8,
            topk_group=4,
            routed_scaling_factor=2.5,
            moe_intermediate_size=512,
            first_k_dense_replace=1,
            rms_norm_eps=1e-6,
            rope_theta=600000.0,
            partial_rotary_factor=0.5,
            max_position_embeddings=8192,
            pad_token_id=156892,
            image_token_offset=157184,
        )

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)


def expected_shapes(config: BackboneConfig, fused_experts: bool = False) -> dict[str, tuple]:
    """Every tensor of an official checkpoint and its shape (per-expert layout unless fused)."""
    c = config
    D, qkv = c.hidden_size, (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim
    E, I, shared = c.num_experts, c.moe_intermediate_size, c.moe_intermediate_size
    shared *= c.num_shared_experts
    shapes: dict[str, tuple] = {"model.word_embeddings.weight": (c.vocab_size, D)}
    for layer in range(c.num_hidden_layers):
        p = f"model.layers.{layer}."
        shapes |= {
            p + "input_layernorm.weight": (D,),
            p + "attention.query_key_value.weight": (qkv, D),
            p + "attention.query_layernorm.weight": (c.head_dim,),
            p + "attention.key_layernorm.weight": (c.head_dim,),
            p + "attention.dense.weight": (D, c.num_attention_heads * c.head_dim),
            p + "post_attention_layernorm.weight": (D,),
        }
        if layer < c.first_k_dense_replace:
            shapes |= _swiglu_shapes(p + "mlp.", D, c.intermediate_size, ".weight")
            continue
        shapes |= {p + "mlp.gate.weight": (E, D), p + "mlp.gate.expert_bias": (E,)}
        if c.num_shared_experts:
            shapes |= _swiglu_shapes(p + "mlp.shared_experts.", D, shared, ".weight")
        if fused_experts:
            shapes |= {
                p + "mlp.experts.gate_proj": (E, I, D),
                p + "mlp.experts.up_proj": (E, I, D),
                p + "mlp.experts.down_proj": (E, D, I),
            }
        else:
            for e in range(E):
                shapes |= _swiglu_shapes(p + f"mlp.experts.{e}.", D, I, ".weight")
    shapes |= {"model.norm.weight": (D,), "lm_head.weight": (c.vocab_size, D)}
    return shapes


def _swiglu_shapes(prefix: str, dim: int, width: int, suffix: str) -> dict[str, tuple]:
    return {
        prefix + "gate_proj" + suffix: (width, dim),
        prefix + "up_proj" + suffix: (width, dim),
        prefix + "down_proj" + suffix: (dim, width),
    }


class RMSNorm(nn.Module):
    """Normalised in fp32, cast back to the input dtype, then scaled (the official order)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class KVCache:
    """Keys and values of completed blocks for every layer, preallocated: [B, G, capacity, d].

    A forward pass attends to the first `length` cached slots plus its own tokens; with
    `store=True` it also writes its keys and values after them and advances `length`.
    """

    def __init__(self, config: BackboneConfig, batch: int, capacity: int, device, dtype):
        shape = (batch, config.num_key_value_heads, capacity, config.head_dim)
        n = config.num_hidden_layers
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n)]
        self.length = 0
        self.capacity = capacity


def rope_frequencies(config: BackboneConfig) -> Tensor:
    """inv_freq_i = theta^(-2i/r) for the r rotary dims of each head: [r/2] fp32."""
    r = config.rotary_dim
    return config.rope_theta ** -(torch.arange(0, r, 2, dtype=torch.float32) / r)


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    """Fused QKV, per-head QK RMSNorm, partial NeoX RoPE, GQA, mask from outside."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        c = config
        self.heads, self.kv_heads, self.head_dim = (
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        )
        qkv_out = (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim
        self.query_key_value = nn.Linear(c.hidden_size, qkv_out, bias=c.use_qkv_bias)
        self.query_layernorm = RMSNorm(c.head_dim, c.rms_norm_eps)
        self.key_layernorm = RMSNorm(c.head_dim, c.rms_norm_eps)
        self.dense = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=c.use_bias)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        mask: Tensor,
        cache: KVCache | None,
        layer: int,
        store: bool,
    ) -> Tensor:
        B, L, _ = x.shape
        qkv = self.query_key_value(x).view(B, L, self.heads + 2 * self.kv_heads, self.head_dim)
        q, k, v = qkv.split([self.heads, self.kv_heads, self.kv_heads], dim=2)  # [B, L, *, d]
        q, k = self.query_layernorm(q), self.key_layernorm(k)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, L, d]
        if cache is not None:
            start = cache.length
            if start + L > cache.capacity:
                raise RuntimeError(f"KV cache overflow: {start + L} > {cache.capacity}")
            cache.keys[layer][:, :, start : start + L] = k
            cache.values[layer][:, :, start : start + L] = v
            k = cache.keys[layer][:, :, : start + L]  # [B, G, S, d]
            v = cache.values[layer][:, :, : start + L]
        # query head h reads KV head h // (H / G), without copying K and V per group
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.dense(out.transpose(1, 2).reshape(B, L, -1))


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first rotary_dim dims of every head; x [B, L, heads, d], cos/sin [B, L, r]."""
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    cos, sin = cos.unsqueeze(2).to(x.dtype), sin.unsqueeze(2).to(x.dtype)
    return torch.cat((rot * cos + rotate_half(rot) * sin, rest), dim=-1)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, width: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, width, bias=False)
        self.up_proj = nn.Linear(dim, width, bias=False)
        self.down_proj = nn.Linear(width, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
    """Sigmoid router, group-limited top-K; `expert_bias` picks experts but never weights them."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(config.num_experts), persistent=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [T, D] -> (weights [T, K] fp32, chosen [T, K] expert ids)."""
        c = self.config
        scores = torch.sigmoid(F.linear(x.float(), self.weight.float()))  # [T, E]
        biased = scores + self.expert_bias.float()
        T, E, G = scores.shape[0], c.num_experts, c.n_group
        group_scores = biased.view(T, G, E // G).topk(2, dim=-1).values.sum(-1)  # [T, G]
        kept_groups = group_scores.topk(c.topk_group, dim=-1).indices  # [T, topk_group]
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept_groups, True)
        keep = keep.unsqueeze(-1).expand(T, G, E // G).reshape(T, E)
        chosen = biased.masked_fill(~keep, float("-inf")).topk(c.num_experts_per_tok).indices
        weights = scores.gather(1, chosen)
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20) * c.routed_scaling_factor
        return weights, chosen


class Experts(nn.Module):
    """All routed experts as stacked weights: gate_proj/up_proj [E, I, D], down_proj [E, D, I].

    This is the official fused layout; per-expert checkpoint tensors load into slices of it.
    """

    def __init__(self, config: BackboneConfig):
        super().__init__()
        E, I, D = config.num_experts, config.moe_intermediate_size, config.hidden_size
        self.gate_proj = nn.Parameter(torch.empty(E, I, D))
        self.up_proj = nn.Parameter(torch.empty(E, I, D))
        self.down_proj = nn.Parameter(torch.empty(E, D, I))

    def forward(self, x: Tensor, weights: Tensor, chosen: Tensor) -> Tensor:
        """x [T, D], weights/chosen [T, K] -> [T, D] fp32: only the experts hit are computed."""
        T, K = chosen.shape
        flat = chosen.reshape(-1)  # [T*K]
        order = flat.argsort(stable=True)
        token_of = order // K  # which token each sorted slot reads
        counts = torch.bincount(flat, minlength=self.gate_proj.shape[0])
        offsets = counts.cumsum(0).to(torch.int32)  # [E] end of each expert's rows
        xs = x[token_of]  # [T*K, D] grouped by expert
        h = F.silu(grouped(xs, self.gate_proj, offsets)) * grouped(xs, self.up_proj, offsets)
        ys = grouped(h, self.down_proj, offsets).float()  # [T*K, D]
        ys = ys * weights.reshape(-1)[order].unsqueeze(-1)
        return torch.zeros(T, x.shape[-1], dtype=torch.float32, device=x.device).index_add_(
            0, token_of, ys
        )


def grouped(x: Tensor, w: Tensor, offsets: Tensor) -> Tensor:
    """Rows of x, sorted by expert, each times its expert's w[e].T: one grouped matmul."""
    return _grouped_mm(x, w.transpose(1, 2), offs=offsets)


_grouped_mm = getattr(F, "grouped_mm", None) or torch._grouped_mm  # older torch


class MoE(nn.Module):
    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.gate = Gate(config)
        self.experts = Experts(config)
        width = config.moe_intermediate_size * config.num_shared_experts
        self.shared_experts = SwiGLU(config.hidden_size, width) if width else None

    def forward(self, x: Tensor) -> Tensor:
        B, L, D = x.shape
        tokens = x.reshape(-1, D)  # [B*L, D]
        weights, chosen = self.gate(tokens)
        y = self.experts(tokens, weights, chosen).to(x.dtype)
        if self.shared_experts is not None:
            y = y + self.shared_experts(tokens)
        return y.view(B, L, D)


class Layer(nn.Module):
    def __init__(self, config: BackboneConfig, index: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attention = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        dense = index < config.first_k_dense_replace
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size) if dense else MoE(config)
        self.index = index

    def forward(self, x, rope, mask, cache, store):
        x = x + self.attention(self.input_layernorm(x), rope, mask, cache, self.index, store)
        return x + self.mlp(self.post_attention_layernorm(x))


class Model(nn.Module):
    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Layer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Backbone(nn.Module):
    """LLaDA2MoeModelLM: embeddings, pre-norm layers (layer 0 dense, then MoE), untied head."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.config = config
        self.model = Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_frequencies(config), persistent=False)  # [r/2]

    def forward(
        self,
        ids: Tensor,
        positions: Tensor,
        mask: Tensor,
        cache: KVCache | None = None,
        store: bool = False,
        last: int | None = None,
        vocab: tuple[int, int] | None = None,
    ) -> Tensor:
        """ids, positions [B, L]; mask [B, 1, L, S] bool (True = may attend) -> logits fp32.

        With a cache, S = cache.length + L. `store` keeps this call's keys and values in the
        cache; `last` computes logits only for the last `last` tokens ([B, last, V]), none if 0;
        `vocab` (lo, hi) computes only the logits of ids lo..hi-1 ([..., hi - lo]).
        """
        x = self.model.word_embeddings(ids)  # [B, L, D]
        freqs = positions.float().unsqueeze(-1) * self.inv_freq.float()  # [B, L, r/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        rope = (emb.cos(), emb.sin())  # computed in fp32, cast at use
        for layer in self.model.layers:
            x = layer(x, rope, mask, cache, store)
        if cache is not None and store:
            cache.length += ids.shape[1]
        if last == 0:  # only filling the cache
            return x.new_empty(0)
        if last is not None:
            x = x[:, -last:]
        head = self.lm_head.weight if vocab is None else self.lm_head.weight[vocab[0] : vocab[1]]
        return F.linear(self.model.norm(x), head).float()  # [B, L or last, V]


_EXPERT_KEY = re.compile(r"(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(\w+_proj)\.weight$")


def checkpoint_names(
    ours: dict[str, Tensor], names: Iterable[str]
) -> dict[str, tuple[str, int | None]]:
    """Map each checkpoint tensor name to (our parameter name, expert index or None)."""
    mapping = {}
    for name in names:
        if m := _EXPERT_KEY.match(name):
            mapping[name] = (f"{m[1]}.{m[3]}", int(m[2]))
        elif name in ours:
            mapping[name] = (name, None)
        else:
            raise BadCheckpoint(f"The checkpoint holds a tensor this model does not know: {name}.")
    return mapping


def shard_files(folder: Path) -> list[Path]:
    """The backbone's safetensors files, in index order (or every root *.safetensors)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / f for f in dict.fromkeys(sorted(weight_map.values()))]
    return sorted(folder.glob("*.safetensors"))


def load_backbone(
    folder: Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    on_progress: Callable[[int, int], None] | None = None,
) -> Backbone:
    """Build on the meta device, allocate once on `device`, then stream tensors shard by shard.

    Every parameter must be filled exactly (strict); the process never holds two copies.
    `on_progress(done, total)` is called after each shard.
    """
    folder = Path(folder)
    config = BackboneConfig.from_checkpoint(folder)
    with torch.device("meta"):
        model = Backbone(config)
    model.to(dtype).model.layers.apply(_keep_router_fp32)  # still meta: nothing allocated
    model.to_empty(device=device)  # the one allocation, already in the final dtypes
    model.inv_freq = rope_frequencies(config).to(device)  # fp32 whatever the model dtype
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    filled: dict[str, set[int | None]] = {}
    files = shard_files(folder)
    for done, file in enumerate(files, 1):
        with safe_open(file, framework="pt", device=str(device)) as shard:
            for name, (ours, expert) in checkpoint_names(params, shard.keys()).items():
                _copy_into(params[ours], expert, shard.get_tensor(name), name)
                filled.setdefault(ours, set()).add(expert)
        if on_progress:
            on_progress(done, len(files))
    _check_filled(params, filled, config.num_experts)
    return model.eval().requires_grad_(False)


def _keep_router_fp32(module: nn.Module) -> None:
    if isinstance(module, Gate):
        module.float()


def _copy_into(target: Tensor, expert: int | None, tensor: Tensor, name: str) -> None:
    slot = target if expert is None else target[expert]
    if tuple(slot.shape) != tuple(tensor.shape):
        raise BadCheckpoint(
            f"Tensor {name} has shape {list(tensor.shape)} but config.json implies "
            f"{list(slot.shape)}."
        )
    with torch.no_grad():
        slot.copy_(tensor)


def _check_filled(params: dict[str, Tensor], filled: dict[str, set], experts: int) -> None:
    """Strict: every parameter and buffer, and every expert slice, came from the checkpoint."""
    for name in params:
        if name == "inv_freq":
            continue
        got = filled.get(name, set())
        if not got:
            raise BadCheckpoint(f"The checkpoint is missing tensor {name}.")
        if None not in got and len(got) < experts:  # per-expert layout
            e = min(set(range(experts)) - got)
            layer, proj = name.rsplit(".", 1)
            raise BadCheckpoint(f"The checkpoint is missing tensor {layer}.{e}.{proj}.weight.")
