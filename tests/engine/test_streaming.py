"""Streaming from host memory (the "< 12 GB" preset): experts copied into a shared pool of device
slots and decoder blocks brought in one at a time give the same results as resident weights, move
only what a step needs, and reuse what is already there. On the CPU host and device are the same
memory; the code path is the one CUDA runs (the `gpu` tests run it with pinned memory)."""

import pytest
import torch

from engine import quant, streaming
from engine.streaming import BlockStream, ExpertCache, StreamedExperts

E, D, I, K, T = 16, 64, 32, 4, 8  # experts, hidden, expert width, per token, tokens


def experts(bits: int, seed=0, device="cpu", dtype=torch.float32, dim=D, width=I, kernel=None):
    """A packed quantized expert stack with random weights (`kernel`: as QuantWeight.pack)."""
    generator = torch.Generator().manual_seed(seed)
    module = quant.QuantExperts(E, dim, width, bits)
    for name in ("gate_proj", "up_proj", "down_proj"):
        weight = getattr(module, name)
        for e in range(E):
            w = torch.randn(weight.n, weight.k, generator=generator) * 0.05
            weight.fill(quant.quantize(w, bits, weight.group or quant.DEFAULT_GROUP), e)
    module.to(device)
    return quant.pack_model(module, dtype, kernel).requires_grad_(False)


def routing(seed: int, tokens: int = T, device="cpu", dim=D):
    """x [T, D], weights and distinct chosen experts [T, K], as the router gives them."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, dim, generator=generator)
    weights = torch.rand(tokens, K, generator=generator)
    chosen = torch.stack([torch.randperm(E, generator=generator)[:K] for _ in range(tokens)])
    return x.to(device), weights.to(device), chosen.to(device)


def streamed(module, capacity: int, device="cpu") -> StreamedExperts:
    return StreamedExperts(module, ExpertCache(module, E, capacity, device), 0)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("capacity", [E, 5])
def test_streamed_layer_is_bit_identical_to_the_resident_one(bits, capacity):
    resident = experts(bits)
    layer = streamed(resident, capacity)
    for seed in range(3):
        x, weights, chosen = routing(seed)
        hit = chosen.unique().numel()
        assert hit > 5  # so capacity 5 runs the step in chunks
        assert torch.equal(layer(x, weights, chosen), resident(x, weights, chosen))


def test_a_bf16_expert_stack_streams_too():
    """--precision bf16 on the "< 12 GB" plan: the experts are parameters, streamed alike."""
    from engine.backbone import Experts
    from engine.tiny import tiny_config

    config = tiny_config(1000, 0)
    torch.manual_seed(0)
    resident = Experts(config).requires_grad_(False)
    for weight in resident.parameters():
        weight.normal_(0, 0.05)
    layer = StreamedExperts(resident, ExpertCache(resident, E, 5, "cpu"), 0)
    x, weights, chosen = routing(0)
    assert torch.equal(layer(x, weights, chosen), resident(x, weights, chosen))


def test_only_hit_experts_are_copied():
    resident = experts(4)
    layer = streamed(resident, E)
    x, weights, chosen = routing(0, tokens=2)
    hit = chosen.unique().numel()
    assert hit < E
    layer(x, weights, chosen)
    per_expert = sum(t[0].numel() * t.element_size() for t in layer.host.values())
    traffic = layer.cache.traffic
    assert traffic.bytes == hit * per_expert
    assert traffic.misses == hit and traffic.hits == 0
    assert layer.cache.slot_bytes() == per_expert


def test_the_lru_reuses_slots_across_steps_and_evicts_the_oldest():
    resident = experts(8)
    layer = streamed(resident, 6)
    cache, per_expert = layer.cache, layer.cache.slot_bytes()
    x = torch.randn(2, D)
    weights = torch.rand(2, 2)

    def step(*pairs):
        before = cache.traffic.bytes
        chosen = torch.tensor(pairs)
        assert torch.equal(layer(x, weights, chosen), resident(x, weights, chosen))
        return (cache.traffic.bytes - before) // per_expert

    assert step((0, 1), (2, 3)) == 4
    slots = {e: cache.where[0][e] for e in range(4)}
    assert step((0, 1), (2, 3)) == 0  # a repeated step copies nothing
    assert step((2, 3), (4, 5)) == 2  # only the new experts 4 and 5
    assert {e: cache.where[0][e] for e in range(4)} == slots  # kept in place
    assert step((6, 7), (2, 3)) == 2  # full: 0 and 1 were used least recently
    assert set(cache.where[0]) == {2, 3, 4, 5, 6, 7}
    assert cache.traffic.hit_rate == pytest.approx(8 / 16)  # 4 + 2 + 2 of 16 lookups


def test_layers_share_the_pool_without_mixing_their_experts():
    first, second = experts(4, seed=1), experts(4, seed=2)
    cache = ExpertCache(first, E, 9, "cpu", layers=2)
    assert cache.quota == 4
    layers = [StreamedExperts(first, cache, 0), StreamedExperts(second, cache, 1)]
    for seed in range(2):
        x, weights, chosen = routing(seed)
        for layer, resident in zip(layers, (first, second), strict=True):
            assert torch.equal(layer(x, weights, chosen), resident(x, weights, chosen))
    assert set(cache.where[0].values()) == set(range(4))  # each layer in its own share
    assert set(cache.where[1].values()) == set(range(4, 8))


def test_a_step_larger_than_the_pool_uses_what_is_there_before_evicting_it():
    resident = experts(4)
    layer = streamed(resident, 4)
    x, weights = torch.randn(3, D), torch.rand(3, 2)
    chosen = torch.tensor([(0, 1), (2, 3), (4, 5)])
    for _ in range(2):
        assert torch.equal(layer(x, weights, chosen), resident(x, weights, chosen))
    traffic = layer.cache.traffic
    assert traffic.misses == 6 + 2  # the second step finds the 4 experts left in the slots
    assert traffic.hits == 4


def test_capacity_comes_from_the_plan_budget():
    from engine import residency
    from engine.backbone import BackboneConfig

    real = BackboneConfig.real()
    stream = residency.PRESETS[-1]
    slot = 3 * 2048 * 512 // 2  # about an int4 expert
    small = residency.make_plan(real, None, stream, residency.budget_for(8))
    large = residency.make_plan(real, None, stream, residency.budget_for(11))
    layers = real.num_hidden_layers - real.first_k_dense_replace
    few = streaming.expert_capacity(small, slot, real.num_experts, layers)
    more = streaming.expert_capacity(large, slot, real.num_experts, layers)
    assert real.num_experts <= few < more <= real.num_experts * layers
    none = residency.make_plan(real, None, stream, residency.budget_for(1))
    assert streaming.expert_capacity(none, slot, real.num_experts, layers) == real.num_experts


# ---- the tiny checkpoint's pipeline on a streaming plan ---------------------------------------


@pytest.fixture(scope="module")
def pipelines(tiny_checkpoint):
    """The same int4 model resident and on the "< 12 GB" plan (forced by a tiny --vram)."""
    from engine.pipeline import Pipeline

    resident = Pipeline.load(tiny_checkpoint, device="cpu", precision="int4")
    streamed = Pipeline.load(tiny_checkpoint, device="cpu", vram=0.5)
    return resident, streamed


def test_a_stream_plan_streams_every_moe_layer(pipelines):
    _, pipeline = pipelines
    assert pipeline.settings.plan.preset.mode == "stream"
    assert pipeline.settings.precision == "int4"
    layers = [o.experts for o, _ in streaming.expert_modules(pipeline.backbone)]
    assert layers and all(isinstance(m, StreamedExperts) for m in layers)
    assert len({id(m.cache) for m in layers}) == 1  # one pool for all layers
    assert {m.layer for m in layers} == set(range(len(layers)))
    cache = layers[0].cache  # no budget left: one layer's worth of slots, shared by the layers
    assert cache.capacity == pipeline.backbone.config.num_experts
    assert cache.quota < pipeline.backbone.config.num_experts  # so large steps run in chunks


def test_a_stream_plan_gives_the_same_logits_and_tokens(pipelines):
    from engine.pipeline import Turn

    resident, streamed = pipelines
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 600, (2, 24), generator=generator)
    positions = torch.arange(24).expand(2, 24)
    mask = torch.ones(2, 1, 24, 24, dtype=torch.bool)
    with torch.inference_mode():
        expected = resident.backbone(ids, positions, mask)
        got = streamed.backbone(ids, positions, mask)
    assert torch.equal(got, expected)
    question = [Turn("user", "What is in this picture? Describe it.", ())]
    answer = resident.understand(question, gen_length=32, steps=8, seed=2)
    assert streamed.understand(question, gen_length=32, steps=8, seed=2) == answer
    assert streamed.backbone.model.layers[1].mlp.experts.cache.traffic.hits > 0


def test_released_slots_free_their_memory_and_refill(pipelines):
    """Between turns (the decoder's) the pool gives its memory back; the next step refills it."""
    resident, streamed = pipelines
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 600, (1, 16), generator=generator)
    positions, mask = torch.arange(16)[None], torch.ones(1, 1, 16, 16, dtype=torch.bool)
    with torch.inference_mode():
        expected = resident.backbone(ids, positions, mask)
        streamed.backbone(ids, positions, mask)
        cache = streamed.backbone.model.layers[1].mlp.experts.cache
        streaming.release(streamed.backbone)
        assert quant.weight_bytes(cache.staging) == 0
        misses = cache.traffic.misses
        assert torch.equal(streamed.backbone(ids, positions, mask), expected)
    assert cache.traffic.misses > misses  # copied in again
    cache.clear()  # every expert copied again, into slots remade in inference mode
    with torch.no_grad():  # which still take copies outside it
        assert torch.equal(streamed.backbone(ids, positions, mask), expected)
    assert quant.weight_bytes(cache.staging) == cache.capacity * cache.slot_bytes()


def test_streamed_decoder_blocks_give_the_same_image(pipelines):
    resident, streamed = pipelines
    expected = resident.generate("a red fox", width=256, height=256, steps=2, seed=1)
    got = streamed.generate("a red fox", width=256, height=256, steps=2, seed=1)
    assert (got.image == expected.image).all()
    dit = streamed.decoder.dit
    stream = dit.block_stream
    assert len(stream.blocks) == len(dit.layers) + len(dit.noise_refiner) + len(dit.context_refiner)
    assert stream.traffic.steps == len(stream.blocks) * 8  # the turbo decoder's 8 steps
    for block in stream.blocks:  # between calls no block holds its weights
        assert all(t.numel() == 0 for t in block.parameters())


def test_status_says_what_streams_and_that_it_is_slow(pipelines):
    _, pipeline = pipelines
    pipeline._decoder(turbo=True)
    status = pipeline.status()
    assert "slow" in status["precision"]
    assert "of experts streamed from" in status["sizes"]
    assert "blocks streamed from" in status["sizes"]
    plan = pipeline.settings.plan.text()
    assert "slow" in plan
    assert "experts streamed from host" in plan and "blocks streamed from host" in plan


def test_block_stream_learns_the_order_and_puts_weights_back():
    blocks = [torch.nn.Linear(8, 8) for _ in range(3)]
    weights = [b.weight.detach().clone() for b in blocks]
    x = torch.randn(2, 8)
    expected = blocks[0](blocks[2](blocks[1](x)))
    stream = BlockStream(blocks, "cpu")
    assert all(b.weight.numel() == 0 for b in blocks)
    for _ in range(2):
        assert torch.equal(blocks[0](blocks[2](blocks[1](x))), expected)
    assert stream.after == {1: 2, 2: 0, 0: 1}
    assert stream.traffic.steps == 6
    stream.remove()
    assert all(torch.equal(b.weight, w) for b, w in zip(blocks, weights, strict=True))


# ---- CUDA: pinned host memory, real copies, the side stream ----------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("kernel", ["loop", "triton"])
def test_cuda_streamed_layer_matches_the_resident_one(bits, kernel):
    if kernel == "triton":
        pytest.importorskip("triton")
    resident = experts(bits, 0, "cuda", torch.bfloat16, dim=256, width=128, kernel=kernel)
    assert resident.kind == kernel
    if bits == 4 and kernel == "loop":  # the tinygemm kernel, not the dequantize fallback
        assert resident.gate_proj.kind == "cuda" and resident.down_proj.kind == "cuda"
    layer = streamed(resident, 5, device="cuda")
    assert all(t.device.type == "cpu" and t.is_pinned() for t in layer.host.values())
    for seed in range(3):
        x, weights, chosen = routing(seed, device="cuda", dim=256)
        x = x.bfloat16()
        torch.testing.assert_close(layer(x, weights, chosen), resident(x, weights, chosen))


@pytest.mark.gpu
def test_cuda_block_stream_prefetches_on_a_side_stream():
    torch.manual_seed(0)
    blocks = [torch.nn.Linear(256, 256).cuda() for _ in range(4)]
    x = torch.randn(64, 256, device="cuda")

    def run(y):
        for block in blocks:
            y = block(y)
        return y

    with torch.inference_mode():
        expected = run(x)
        stream = BlockStream(blocks, "cuda")
        outputs = [run(x) for _ in range(3)]
    for out in outputs:
        torch.testing.assert_close(out, expected)
    assert stream.traffic.hits >= 8  # after the first pass every block was prefetched
    assert all(h[n].is_pinned() for h in stream.host for n in h)


@pytest.mark.gpu
def test_cuda_pipeline_on_a_stream_plan(tiny_checkpoint):
    from engine.pipeline import Pipeline

    pipeline = Pipeline.load(tiny_checkpoint, device="cuda", vram=0.5)
    result = pipeline.generate("a red fox", width=256, height=256, steps=2, seed=1)
    assert result.image.shape == (256, 256, 3)
    layer = pipeline.backbone.model.layers[1].mlp.experts
    assert isinstance(layer, StreamedExperts)
    assert all(t.is_pinned() for t in layer.host.values())
    assert next(layer.staging.buffers()).is_cuda or next(layer.staging.buffers()).is_pinned()
    assert "streamed from pinned host memory" in pipeline.status()["sizes"]
