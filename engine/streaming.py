"""Cards under 12 GB: routed experts and decoder blocks wait in pinned host memory and stream in.

The "< 12 GB" preset of engine/residency.py keeps on the device everything but the two largest
sets of weights:

- The backbone's routed experts. Each MoE layer's full expert stacks stay in (pinned) host
  memory; one device pool of expert slots (`ExpertCache`, a small `QuantExperts` or `Experts`
  of `capacity` experts, its size chosen from the plan's budget) is split evenly between the
  layers. A step copies into the layer's free or least recently used slots only the experts it
  hits that are not there yet, then runs the pool's own forward on slot numbers
  (`StreamedExperts`). Nothing is prefetched: which experts a step needs is known only once its
  router has run.
- The decoder transformer's blocks (`BlockStream`). Between calls a block holds empty
  placeholders; a forward pre-hook brings its weights from host memory just before it runs and
  a forward hook drops them after. On CUDA the next block is copied on a side stream while the
  current one runs.

Everything is generic over the tensors a module holds: an expert tensor is any parameter or
buffer whose leading dimension is the expert count, whatever the quantized format names it.
On the CPU host and device are the same memory but the code path is the same, which is what the
tests check. Facts: shared/notes/stack.md §2.3 (why streaming experts is slow).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from engine import quant

GIB = 2**30


# ---- tensors by dotted name ----------------------------------------------------------------


def named_tensors(module: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """Every parameter and buffer of `module` by dotted name (shared ones once)."""
    yield from module.named_parameters()
    yield from module.named_buffers()


def get_tensor(module: nn.Module, name: str) -> Tensor:
    path, _, leaf = name.rpartition(".")
    owner = module.get_submodule(path) if path else module
    return getattr(owner, leaf)


def set_tensor(module: nn.Module, name: str, value: Tensor) -> None:
    """Point a parameter (its data) or a buffer at `value`, keeping the Parameter object."""
    path, _, leaf = name.rpartition(".")
    owner = module.get_submodule(path) if path else module
    if leaf in owner._parameters:
        owner._parameters[leaf].data = value
    else:
        owner._buffers[leaf] = value


def pinned(t: Tensor) -> Tensor:
    """`t` on the host, page-locked where CUDA is present (so copies to the device are async)."""
    t = t.detach()
    if not torch.cuda.is_available():
        return t.to("cpu")
    if t.device.type == "cpu" and t.is_pinned():
        return t
    return torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t)  # one copy, no more


def nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


# ---- the shared pool of expert slots ----------------------------------------------------------


@dataclass
class Traffic:
    """What streaming moved: expert lookups that found their slot, lookups that copied, bytes."""

    hits: int = 0
    misses: int = 0
    bytes: int = 0
    steps: int = 0

    @property
    def hit_rate(self) -> float:
        looked = self.hits + self.misses
        return self.hits / looked if looked else 0.0


def hollow_copy(module: nn.Module, experts: int, capacity: int, device) -> nn.Module:
    """A copy of `module` with the same attributes whose expert tensors hold `capacity` slots
    (uninitialised, on `device`) and whose other tensors are empty-shaped copies to be filled."""
    clone = copy.copy(module)  # a new __dict__ with the same attributes
    clone._parameters, clone._buffers, clone._modules = {}, {}, {}
    clone._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
    for name, t in module._parameters.items():
        clone._parameters[name] = None if t is None else nn.Parameter(
            _slots_like(t, experts, capacity, device), requires_grad=False)  # fmt: skip
    for name, t in module._buffers.items():
        clone._buffers[name] = None if t is None else _slots_like(t, experts, capacity, device)
    for name, child in module._modules.items():
        clone._modules[name] = (
            None if child is None else hollow_copy(child, experts, capacity, device)
        )
    for count in ("num_experts", "experts"):  # QuantExperts, QuantWeight: the stack's length
        if getattr(clone, count, None) == experts:
            setattr(clone, count, capacity)
    return clone


def _slots_like(t: Tensor, experts: int, capacity: int, device) -> Tensor:
    shape = (capacity, *t.shape[1:]) if t.dim() and t.shape[0] == experts else t.shape
    return torch.empty(shape, dtype=t.dtype, device=device)


class ExpertCache:
    """Device slots for the experts of every streamed layer.

    `staging` is a hollow copy of one layer's expert module with `capacity` experts; its own
    forward runs the experts once they sit in their slots. Each of the `layers` layers owns an
    equal share of the slots (`quota`) with its own least-recently-used order: the layers run
    one after another, so one order shared by all would evict each layer's experts just before
    the next step needs them again whenever the pool is smaller than a step's demand.
    """

    def __init__(self, template: nn.Module, experts: int, capacity: int, device, layers: int = 1):
        if capacity < layers:
            raise ValueError(f"an expert cache for {layers} layers needs {layers} slots or more")
        self.experts, self.capacity, self.device = experts, capacity, torch.device(device)
        self.quota = capacity // layers
        self.staging = hollow_copy(template, experts, capacity, self.device).requires_grad_(False)
        self.slot_names = [n for n, t in named_tensors(template) if _is_stacked(t, experts)]
        self.layers = layers
        self.shapes = {n: (tuple(t.shape), t.dtype) for n, t in named_tensors(self.staging)}
        self.clear()

    def clear(self) -> None:
        """Forget what the slots hold (they fill again as steps need them) and the traffic."""
        self._forget()
        self.traffic = Traffic()

    def _forget(self) -> None:
        self.where = [OrderedDict() for _ in range(self.layers)]  # expert -> slot, oldest first
        q = self.quota  # each layer's free slots, popped from the end: ascending
        self.free = [list(range((i + 1) * q - 1, i * q - 1, -1)) for i in range(self.layers)]

    def release(self) -> None:
        """Give the slots' device memory back (the other phase's turn needs it, and moving the
        pool to host memory would cost as much as refilling it); the next step reallocates."""
        for name, (_, dtype) in self.shapes.items():
            device = get_tensor(self.staging, name).device
            set_tensor(self.staging, name, torch.empty(0, dtype=dtype, device=device))
        self._forget()

    def ensure(self, device) -> None:
        """The slots allocated on `device` (after `release`); normal tensors even when a step
        runs in inference mode, so that a later step outside it may still copy into them."""
        for name, (shape, dtype) in self.shapes.items():
            if tuple(get_tensor(self.staging, name).shape) != shape:
                with torch.inference_mode(False):
                    slots = torch.empty(shape, dtype=dtype, device=device)
                set_tensor(self.staging, name, slots)

    def holds(self, layer: int, expert: int) -> bool:
        return expert in self.where[layer]

    def bring(self, layer: int, experts: list[int], host: dict[str, Tensor]) -> list[int]:
        """The slots holding `experts` (at most `quota`, distinct) of `layer`, copying in from
        `host` (name -> [E, ...] tensor) those not already there."""
        where, free = self.where[layer], self.free[layer]
        missing = [e for e in experts if e not in where]
        for e in experts:
            if e in where:
                where.move_to_end(e)
        self.traffic.hits += len(experts) - len(missing)
        self.traffic.misses += len(missing)
        placed = {}
        for e in missing:  # the oldest are not wanted now: `experts` were all moved to the end
            where[e] = placed[e] = free.pop() if free else where.popitem(last=False)[1]
        self._copy(placed, host)
        return [where[e] for e in experts]

    def _copy(self, placed: dict[int, int], host: dict[str, Tensor]) -> None:
        """Copy each placed expert's slice of every stacked tensor, runs of consecutive experts
        into consecutive slots as one copy; non-blocking from pinned memory."""
        for first, slot, count in _runs(placed):
            for name in self.slot_names:
                source = host[name][first : first + count]
                target = get_tensor(self.staging, name)[slot : slot + count]
                target.copy_(source, non_blocking=True)
                self.traffic.bytes += nbytes(source)

    def slot_bytes(self) -> int:
        return sum(nbytes(get_tensor(self.staging, n)[0]) for n in self.slot_names)


def _starts(counts: list[int]) -> list[int]:
    starts, total = [], 0
    for count in counts:
        starts.append(total)
        total += count
    return starts


def _is_stacked(t: Tensor, experts: int) -> bool:
    return t.dim() > 0 and t.shape[0] == experts


def _runs(placed: dict[int, int]) -> list[tuple[int, int, int]]:
    """(first expert, first slot, count) for runs where both go up by one."""
    runs: list[list[int]] = []
    for e, slot in sorted(placed.items()):
        if runs and e == runs[-1][0] + runs[-1][2] and slot == runs[-1][1] + runs[-1][2]:
            runs[-1][2] += 1
        else:
            runs.append([e, slot, 1])
    return [tuple(r) for r in runs]


class StreamedExperts(nn.Module):
    """One MoE layer's routed experts kept in host memory, run in the shared device slots.

    Only the experts a step hits are copied (those still in a slot from earlier steps are not);
    a step hitting more experts than the layer's share of slots runs in chunks, those already
    in a slot first (so they are used before any of them is evicted).
    The pool's forward gets one row per (token, expert) pair with weight 1 and returns each
    pair's expert output; the pairs are then weighted and summed per token here, in the same
    order as the resident module, so the result is bit-identical whatever slot an expert got.
    """

    def __init__(self, host: nn.Module, cache: ExpertCache, layer: int):
        super().__init__()
        self.layer, self.cache, self.num_experts = layer, cache, cache.experts
        self.staging = cache.staging  # registered, so it moves with the model on turns
        named = dict(named_tensors(host))
        self.host = {n: pinned(named[n]) for n in cache.slot_names}  # not registered: stays
        self.fixed = {n: t for n, t in named.items() if n not in self.host}  # not per expert
        self.host_bytes = sum(nbytes(t) for t in self.host.values())

    def forward(self, x: Tensor, weights: Tensor, chosen: Tensor) -> Tensor:
        """x [T, D], weights/chosen [T, K] -> [T, D] fp32, as the resident experts."""
        T, K = chosen.shape
        flat = chosen.reshape(-1)
        order = flat.argsort(stable=True)
        token_of = order // K
        hit, counts = torch.unique_consecutive(flat[order], return_counts=True)
        hit, counts = hit.tolist(), counts.tolist()  # the one host sync of a step
        self.cache.ensure(x.device)
        for name, tensor in self.fixed.items():
            set_tensor(self.staging, name, tensor.to(x.device))
        xs = x[token_of]
        ys = torch.empty(T * K, x.shape[-1], dtype=torch.float32, device=x.device)
        first_row = dict(zip(hit, _starts(counts), strict=True))
        rows_of = dict(zip(hit, counts, strict=True))
        queue = sorted(hit, key=lambda e: not self.cache.holds(self.layer, e))  # present first
        for at in range(0, len(queue), self.cache.quota):
            chunk = queue[at : at + self.cache.quota]
            slots = self.cache.bring(self.layer, chunk, self.host)
            rows, slot_of = [], []
            for e, slot in zip(chunk, slots, strict=True):
                rows += range(first_row[e], first_row[e] + rows_of[e])
                slot_of += [slot] * rows_of[e]
            rows = torch.tensor(rows, device=x.device)
            slot_of = torch.tensor(slot_of, device=x.device).unsqueeze(-1)
            ones = torch.ones(len(rows), 1, dtype=weights.dtype, device=x.device)
            ys[rows] = self.staging(xs[rows], ones, slot_of)
        self.cache.traffic.steps += 1
        ys = ys * weights.reshape(-1)[order].unsqueeze(-1)
        return torch.zeros(T, x.shape[-1], dtype=torch.float32, device=x.device).index_add_(
            0, token_of, ys
        )


def expert_modules(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(owner, attribute) of each MoE layer's routed experts, in layer order."""
    return [
        (module, "experts")
        for module in model.modules()
        if hasattr(module, "gate") and isinstance(getattr(module, "experts", None), nn.Module)
    ]


def expert_capacity(plan, slot_bytes: int, experts: int, layers: int) -> int:
    """Slots the plan's budget leaves after the resident backbone, its working memory and the
    vision encoder: at least one layer's experts (a slot per layer at the least; bigger steps
    run in chunks), at most all of them."""
    if plan is None:
        return experts
    backbone = plan.part("backbone")
    resident = backbone.weights - plan.expert_bytes + backbone.working
    free = plan.budget - resident - plan.part("vision").weights
    return int(max(experts, layers, min(experts * layers, free // max(slot_bytes, 1))))


def stream_experts(
    model: nn.Module,
    device,
    plan=None,
    capacity: int | None = None,
    pack_dtype: torch.dtype | None = None,
) -> ExpertCache | None:
    """Replace every MoE layer's experts by `StreamedExperts` over one shared cache on `device`.

    The experts may sit anywhere (a model loaded on the host, or on the device); they end in
    pinned host memory. `pack_dtype`: pack each layer for `device`'s kernel first (a model
    loaded on the host in the neutral format). `capacity` None: from the plan's budget.
    Returns the cache (None when the model has no routed experts or is streamed already).
    """
    device = torch.device(device)
    owners = [
        (o, a) for o, a in expert_modules(model) if not isinstance(getattr(o, a), StreamedExperts)
    ]
    if not owners:
        return None
    experts = model.config.num_experts
    cache = None
    for index, (owner, attribute) in enumerate(owners):
        host = getattr(owner, attribute)
        if pack_dtype is not None:
            quant.pack_model(host.to(device), pack_dtype)
        if cache is None:
            slot = sum(nbytes(t[0]) for _, t in named_tensors(host) if _is_stacked(t, experts))
            size = capacity or expert_capacity(plan, slot, experts, len(owners))
            cache = ExpertCache(host, experts, size, device, len(owners))
        setattr(owner, attribute, StreamedExperts(host, cache, index))
        del host
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return cache


def load_backbone(folder: Path, device, dtype, settings, on_progress=None):
    """The backbone for a streaming plan: loaded in host memory in the neutral format, experts
    packed one layer at a time on `device` and kept in pinned host memory, the rest moved to
    `device` and packed there. The device never holds all the experts, not even while loading."""
    model = quant.load_backbone(
        folder, "cpu", dtype, settings.precision, on_progress=on_progress, pack=False
    )
    owners = expert_modules(model)
    hosts = [getattr(owner, attribute) for owner, attribute in owners]
    for owner, attribute in owners:
        setattr(owner, attribute, None)  # out of the model while the rest moves and packs
    model.to(device)
    quant.pack_model(model, dtype)
    for (owner, attribute), host in zip(owners, hosts, strict=True):
        setattr(owner, attribute, host)
    hosts.clear()
    stream_experts(model, device, settings.plan, pack_dtype=dtype)
    return model


# ---- decoder blocks, one at a time -----------------------------------------------------------


class BlockStream:
    """Blocks of a model whose weights wait in (pinned) host memory between calls.

    Each block's tensors are replaced by empty placeholders; a forward pre-hook puts the
    block's device copies in, a forward hook puts the placeholders back, so at most the running
    block (and, on CUDA, the next one, copied on a side stream while this one runs) is held on
    the device. The order blocks run in is learned from the calls, so the prefetch follows the
    model's own loop.
    """

    def __init__(self, blocks: list[nn.Module], device, prefetch: bool = True):
        self.device = torch.device(device)
        self.blocks = blocks
        self.host: list[dict[str, Tensor]] = []
        self.placeholders: list[dict[str, Tensor]] = []
        for block in blocks:
            tensors = dict(named_tensors(block))
            self.host.append({n: pinned(t) for n, t in tensors.items()})
            self.placeholders.append({
                n: torch.empty(0, dtype=t.dtype, device=self.device) for n, t in tensors.items()
            })  # fmt: skip
            self._install(len(self.host) - 1, self.placeholders[-1])
        self.index = {id(b): i for i, b in enumerate(blocks)}
        self.after: dict[int, int] = {}  # block -> the block that ran after it last time
        self.last: int | None = None
        self.ready: dict[int, tuple[dict[str, Tensor], object]] = {}  # prefetched, with event
        self.side = (
            torch.cuda.Stream(self.device) if prefetch and self.device.type == "cuda" else None
        )
        self.traffic = Traffic()
        self.host_bytes = sum(nbytes(t) for h in self.host for t in h.values())
        self.handles = []
        for block in blocks:
            self.handles.append(block.register_forward_pre_hook(self._bring))
            self.handles.append(block.register_forward_hook(self._drop))

    def _install(self, i: int, tensors: dict[str, Tensor]) -> None:
        for name, t in tensors.items():
            set_tensor(self.blocks[i], name, t)

    def _fetch(self, i: int) -> dict[str, Tensor]:
        self.traffic.bytes += sum(nbytes(t) for t in self.host[i].values())
        return {n: t.to(self.device, non_blocking=True) for n, t in self.host[i].items()}

    def _bring(self, block: nn.Module, args) -> None:
        i = self.index[id(block)]
        if self.last is not None:
            self.after[self.last] = i
        self.last = i
        got = self.ready.pop(i, None)
        if got is None:
            self.traffic.misses += 1
            tensors = self._fetch(i)
        else:
            self.traffic.hits += 1
            tensors, event = got
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(event)
            for t in tensors.values():
                t.record_stream(stream)  # freed only after this stream has used it
        self._install(i, tensors)
        if self.side is not None:
            self._prefetch(self.after.get(i, (i + 1) % len(self.blocks)))

    def _prefetch(self, i: int) -> None:
        if i in self.ready:
            return
        self.side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.side):
            tensors = self._fetch(i)
            event = torch.cuda.Event()
            event.record(self.side)
        self.ready[i] = (tensors, event)

    def _drop(self, block: nn.Module, args, output) -> None:
        self._install(self.index[id(block)], self.placeholders[self.index[id(block)]])
        self.traffic.steps += 1

    def release(self) -> None:
        """Drop the prefetched block (the device memory it holds), e.g. before the other turn."""
        self.ready.clear()

    def remove(self) -> None:
        """Put the weights back in the blocks (on the host) and remove the hooks."""
        for handle in self.handles:
            handle.remove()
        self.ready.clear()
        for i in range(len(self.blocks)):
            self._install(i, self.host[i])


DIT_BLOCK_LISTS = ("noise_refiner", "context_refiner", "siglip_refiner", "layers")


def stream_decoder_blocks(dit: nn.Module, device, prefetch: bool = True) -> BlockStream | None:
    """Stream the Z-Image transformer's blocks (refiners and main layers) from host memory and
    move the rest of it to `device`. Returns the stream (None if streamed already)."""
    if getattr(dit, "block_stream", None) is not None:
        return None
    blocks = [b for name in DIT_BLOCK_LISTS for b in (getattr(dit, name, None) or [])]
    stream = BlockStream(blocks, device, prefetch)
    dit.to(device)  # what is left: embedders, final layer, placeholders
    dit.block_stream = stream
    return stream


# ---- the pipeline -----------------------------------------------------------------------------


def streams(settings) -> bool:
    """Whether the settings' plan streams from host memory (the "< 12 GB" preset)."""
    plan = getattr(settings, "plan", None)
    return plan is not None and plan.preset.mode == "stream"


def stream_decoder(pipeline) -> None:
    """On a streaming plan, load the decoder transformer in host memory (where the device could
    not hold it), as its loader would on the device (quantized as it streams in), and stream its
    blocks; the rest of it goes to the device."""
    decoder = pipeline.decoder
    if not streams(pipeline.settings) or decoder is None:
        return
    if decoder.dit is None:
        decoder.load_sigvq()  # on the device: small
        device, decoder.device = decoder.device, torch.device("cpu")
        try:
            decoder.load_dit()
        finally:
            decoder.device = device
    stream_decoder_blocks(decoder.dit, decoder.device)


def release(module: nn.Module) -> None:
    """Free what streaming holds on the device for `module` between its turns: the expert
    slots of a backbone, a prefetched block of a decoder."""
    stream = getattr(module, "block_stream", None)
    if stream is not None:
        stream.release()
    layer = next((m for m in module.modules() if isinstance(m, StreamedExperts)), None)
    if layer is not None:
        layer.cache.release()


def describe(module: nn.Module) -> str:
    """What of `module` streams from host memory, for the engine's status ("" for nothing)."""
    experts = [m for m in module.modules() if isinstance(m, StreamedExperts)]
    if experts:
        cache = experts[0].cache
        host = sum(m.host_bytes for m in experts)
        return (
            f" + {host / GIB:.2f} GiB of experts streamed from {_host_name()} "
            f"({cache.capacity} slots, {cache.traffic.hit_rate:.0%} found in a slot)"
        )
    stream = getattr(module, "block_stream", None)
    if stream is not None:
        return (
            f" + {stream.host_bytes / GIB:.2f} GiB in {len(stream.blocks)} blocks streamed "
            f"from {_host_name()}"
        )
    return ""


def _host_name() -> str:
    return "pinned host memory" if torch.cuda.is_available() else "host memory"
