"""Block masked diffusion as plain functions: text (understanding, thinking) and image tokens.

The sequence is cut into blocks of `block_length` from position 0. Blocks are denoised left to
right; inside a block each forward pass commits the most confident masked tokens (and every token
above `threshold`), never remasking. Only the generated part is ever written: a mask token typed
into a prompt stays prompt text. With `threshold=0.95, use_cache=False` this is the official loop,
draw for draw; completed blocks never change, so their keys and values may be cached (exact for a
block-causal mask). Several prompts (CFG rows) run as one batch, left-padded
so their generated parts line up. Facts: shared/notes/backbone_facts.md §3.7, §5.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.backbone import Backbone, KVCache

ZERO_TEMPERATURE_MODES = ("greedy", "multinomial")


@dataclass(frozen=True)
class Sampling:
    """How a token is drawn from the logits of one position.

    At temperature 0 the official LLaDA2.0 code still draws with `torch.multinomial` at T=1
    ("multinomial"); the Uni-derived LLaDA-Image copy and sglang-omni take the argmax ("greedy").
    Greedy is our default: it is what the sources closest to Uni do, and answers reproduce exactly.
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    zero_temperature: str = "greedy"

    def __post_init__(self):
        if self.zero_temperature not in ZERO_TEMPERATURE_MODES:
            raise ValueError(f"zero_temperature must be one of {ZERO_TEMPERATURE_MODES}")


@dataclass(frozen=True)
class StepReport:
    """What `on_step` receives after each forward pass; raise `Cancelled` in it to stop."""

    step: int  # forward passes done so far
    total: int  # most forward passes this run can take
    block: int  # index of the block being denoised, counted from the first generated block
    committed: list[tuple[int, int]]  # (index in the generated part, token id) newly committed
    tokens: Tensor  # [gen_length] the generated part so far, mask id where still masked


OnStep = Callable[[StepReport], None]
Guidance = Callable[[Tensor], Tensor]  # per-row logits [R, n, V] -> guided logits [n, V]


def transfer_counts(block_length: int, steps: int) -> list[int]:
    """Tokens to commit at each step: block_length // steps, plus one for the first remainder."""
    base, extra = divmod(block_length, steps)
    return [base + (1 if s < extra else 0) for s in range(steps)]


def sample(logits: Tensor, sampling: Sampling, generator: torch.Generator | None):
    """logits [n, V] fp32 -> (tokens [n], probability of each drawn token [n])."""
    if sampling.temperature > 0 and sampling.temperature != 1:
        logits = logits / sampling.temperature
    if sampling.top_k is not None:
        kth = logits.topk(min(sampling.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p is not None:
        logits = _top_p(logits, sampling.top_p)
    probs = torch.softmax(logits, dim=-1)
    if sampling.temperature == 0 and sampling.zero_temperature == "greedy":
        p, tokens = probs.max(dim=-1)
        return tokens, p
    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _top_p(logits: Tensor, top_p: float) -> Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
    drop = cumulative - torch.softmax(sorted_logits, dim=-1) > top_p  # keep the first over top_p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def choose_commits(confidence: Tensor, count: int, threshold: float | None) -> Tensor:
    """confidence [n] (-inf where not masked) -> bool [n]: every token above threshold when
    that is at least `count` tokens, else the `count` most confident (official rule)."""
    active = int(torch.isfinite(confidence).sum())
    if threshold is not None:
        above = confidence > threshold
        if int(above.sum()) >= count:
            return above
    chosen = torch.zeros_like(confidence, dtype=torch.bool)
    chosen[confidence.topk(min(count, active)).indices] = True
    return chosen


class Layout:
    """R prompts left-padded to one length P, then the generated part, in whole blocks.

    ids [R, T]; valid [R, T] (False on pad slots); positions [R, T] restart at 0 on each row's
    first real token; block b covers indices [b*B, (b+1)*B).
    """

    def __init__(self, prompts: Sequence[Sequence[int]], init: Tensor, mask_id: int, B: int):
        R, G = len(prompts), init.numel()
        self.P = max(len(p) for p in prompts)
        self.G, self.B = G, B
        self.blocks = math.ceil((self.P + G) / B)
        T = self.blocks * B
        self.ids = torch.full((R, T), mask_id, dtype=torch.long)
        self.valid = torch.ones(R, T, dtype=torch.bool)
        self.positions = torch.zeros(R, T, dtype=torch.long)
        for r, prompt in enumerate(prompts):
            pad = self.P - len(prompt)
            self.ids[r, pad : self.P] = torch.as_tensor(list(prompt), dtype=torch.long)
            self.valid[r, :pad] = False
            self.positions[r, pad:] = torch.arange(T - pad)
        self.ids[:, self.P : self.P + G] = init.reshape(-1)

    def to(self, device) -> Layout:
        self.ids, self.valid, self.positions = (
            t.to(device) for t in (self.ids, self.valid, self.positions)
        )
        return self

    def mask(self, q_lo: int, q_hi: int, k_hi: int) -> Tensor:
        """bool [R, 1, q, k]: block(key) <= block(query), pad keys hidden, every query sees itself
        (so a pad query never attends to nothing)."""
        q = torch.arange(q_lo, q_hi, device=self.ids.device)
        k = torch.arange(0, k_hi, device=self.ids.device)
        allowed = (k[None, :] // self.B) <= (q[:, None] // self.B)  # [q, k]
        allowed = allowed[None] & self.valid[:, None, :k_hi]  # [R, q, k]
        allowed |= q[:, None] == k[None, :]
        return allowed.unsqueeze(1)


def denoise(
    model: Backbone,
    prompts: Sequence[Sequence[int]],
    init: Tensor,
    *,
    mask_id: int,
    block_length: int = 32,
    steps: int = 32,
    threshold: float | None = 0.95,
    sampling: Sampling = Sampling(),
    guidance: Guidance | None = None,
    allowed_vocab: tuple[int, int] | None = None,
    adaptive: bool = False,
    stop_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
    on_step: OnStep | None = None,
    use_cache: bool = True,
) -> Tensor:
    """Fill the masked entries of `init` [G] after the prompts; returns the generated part [G].

    `guidance` mixes the rows' logits (CFG); without it there must be one prompt.
    `allowed_vocab` (lo, hi) restricts drawn ids to that range (image-only vocabulary); only
    those logits are computed (a tenth of the head for images), so guidance and its rescale see
    the restricted vocabulary, as when masking after CFG. `adaptive` commits
    ceil(masked / steps left) per step instead of the fixed official schedule. The run stops
    after a block in which a `stop_ids` token was committed.
    """
    if guidance is None and len(prompts) != 1:
        raise ValueError("several prompt rows need a guidance function")
    device = next(model.parameters()).device
    layout = Layout(prompts, init, mask_id, block_length).to(device)
    B, P = block_length, layout.P
    first = P // B
    cache = None
    if use_cache:
        cache = KVCache(model.config, len(prompts), layout.blocks * B, device, _dtype(model))
    schedule = transfer_counts(B, steps)
    total = (layout.blocks - first) * steps
    done = 0
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    for blk in range(first, layout.blocks):
        lo, hi = blk * B, (blk + 1) * B
        generated = torch.arange(lo, hi, device=device) >= P
        for s in range(steps):
            active = generated & (layout.ids[0, lo:hi] == mask_id)
            if not active.any():
                break
            if cache is not None:
                logits = _cached_step(model, layout, cache, lo, hi, allowed_vocab)  # [R, B, V]
            else:
                prefix = (layout.ids[:, :hi], layout.positions[:, :hi], layout.mask(0, hi, hi))
                logits = model(*prefix, last=B, vocab=allowed_vocab)
            mixed = guidance(logits) if guidance else logits[0]  # [B, V]
            # Draw at every position of the block, as the official loop does, so a seeded
            # multinomial draw takes the same random numbers; only masked ones may commit.
            tokens, p = sample(mixed, sampling, generator)
            tokens += allowed_vocab[0] if allowed_vocab else 0
            confidence = torch.where(active, p, float("-inf"))
            proposal = torch.where(active, tokens, mask_id)
            count = math.ceil(int(active.sum()) / (steps - s)) if adaptive else schedule[s]
            chosen = choose_commits(confidence, count, threshold)
            layout.ids[:, lo:hi] = torch.where(chosen, proposal, layout.ids[:, lo:hi])
            done += 1
            if on_step:
                where = chosen.nonzero().squeeze(-1)
                committed = [(lo + int(i) - P, int(proposal[i])) for i in where]
                committed = [(i, t) for i, t in committed if i < layout.G]  # not the tail
                on_step(StepReport(done, total, blk - first, committed, _part(layout)))
        if len(stops) and torch.isin(layout.ids[0, P:hi], stops).any():
            break
    return _part(layout)


def _cached_step(model: Backbone, layout: Layout, cache: KVCache, lo: int, hi: int, vocab):
    """Logits of the block [lo, hi) [R, B, V]. The finished tokens before it that the cache lacks
    (the prompt, the previous block) ride along in the same forward and stay cached, so caching
    costs no pass of its own. Exact: under the block-causal mask no earlier token sees this block.
    """
    start = cache.length
    window = (layout.ids[:, start:hi], layout.positions[:, start:hi], layout.mask(start, hi, hi))
    logits = model(*window, cache, store=True, last=hi - lo, vocab=vocab)
    cache.length = lo  # keep the finished tokens; this block's keys change with the next commit
    return logits


def _part(layout: Layout) -> Tensor:
    return layout.ids[0, layout.P : layout.P + layout.G].clone()


def _dtype(model: Backbone) -> torch.dtype:
    return model.model.word_embeddings.weight.dtype


def cfg(scale: float, rescale: float = 0.0) -> Guidance:
    """Two rows [cond, uncond]: L_u + s (L_c - L_u), optionally std-rescaled toward L_c."""

    def guide(logits: Tensor) -> Tensor:
        cond, uncond = logits[0], logits[1]
        return _rescale(uncond + scale * (cond - uncond), cond, rescale)

    return guide


def cfg_edit(text_scale: float, image_scale: float, rescale: float = 0.0) -> Guidance:
    """Rows [cond, no-text(, no-image)]: L_u + s_t (L_c - L_u) + s_i (L_u - L_ni).

    The no-image row is only present when image_scale != 0 (it adds nothing otherwise).
    """

    def guide(logits: Tensor) -> Tensor:
        cond, no_text = logits[0], logits[1]
        mixed = no_text + text_scale * (cond - no_text)
        if image_scale:
            mixed = mixed + image_scale * (no_text - logits[2])
        return _rescale(mixed, cond, rescale)

    return guide


def _rescale(guided: Tensor, cond: Tensor, phi: float) -> Tensor:
    """sglang-omni's CFG rescale over the vocabulary; phi = 0 leaves the guided logits alone."""
    if not phi:
        return guided
    std_c = cond.std(dim=-1, keepdim=True)
    std_g = guided.std(dim=-1, keepdim=True)
    return phi * guided * std_c / (std_g + 1e-6) + (1 - phi) * guided


def generate_text(
    model: Backbone,
    prompt: Sequence[int],
    *,
    mask_id: int,
    eos_id: int,
    gen_length: int = 2048,
    block_length: int = 32,
    steps: int = 32,
    threshold: float | None = 0.95,
    sampling: Sampling = Sampling(),
    stop_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
    on_step: OnStep | None = None,
    use_cache: bool = True,
) -> list[int]:
    """Official §5.1 loop on the full vocabulary; returns the tokens before the first stop id.

    Stops after the block in which EOS (or a `stop_ids` token) is committed; the stop token
    itself is not returned.
    """
    steps = min(steps, gen_length)
    init = torch.full((gen_length,), mask_id, dtype=torch.long)
    out = denoise(
        model,
        [prompt],
        init,
        mask_id=mask_id,
        block_length=block_length,
        steps=steps,
        threshold=threshold,
        sampling=sampling,
        stop_ids=[eos_id, *stop_ids],
        generator=generator,
        on_step=on_step,
        use_cache=use_cache,
    ).tolist()
    return until_stop(out, [eos_id, *stop_ids, mask_id])


def until_stop(tokens: list[int], stops: Sequence[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in stops:
            return tokens[:i]
    return tokens
