"""The residency plan at the real model's sizes, on the meta device (no memory used)."""

import numpy as np
import pytest

from engine import residency
from engine.backbone import BackboneConfig

GIB = residency.GIB
# card size -> the preset the memory plan in DESIGN.md gives it
TABLE = {48: "48 GB", 24: "24 GB", 16: "12-16 GB", 12: "12-16 GB", 8: "< 12 GB"}


@pytest.fixture(scope="module")
def real():
    return BackboneConfig.real()


@pytest.mark.parametrize("vram", sorted(TABLE))
def test_each_preset_fits_its_budget_at_1024_with_three_cfg_rows(real, vram):
    plan = residency.choose(real, None, residency.budget_for(vram), width=1024, height=1024)
    assert plan.preset.name == TABLE[vram]
    assert plan.fits and plan.peak <= plan.budget
    backbone = plan.part("backbone")
    kv = residency.kv_cache_bytes(real, residency.sequence_tokens(1024, 1024, 1), rows=3)
    assert backbone.working >= kv > 0.25 * GIB  # the KV cache of 3 rows is in the estimate


def test_sizes_match_the_released_model(real):
    bf16, experts = residency.backbone_sizes(real, "bf16")
    assert 31e9 < bf16 < 34e9  # "about 32 GB" (facts §8)
    assert experts > 0.9 * bf16  # routed experts are ~95% of the parameters
    int8, _ = residency.backbone_sizes(real, "int8")
    int4, _ = residency.backbone_sizes(real, "int4")
    assert 0.5 * bf16 < int8 < 0.56 * bf16
    assert 0.28 * bf16 < int4 < 0.36 * bf16  # embeddings and head stay bf16


def test_a_preset_that_does_not_fit_says_so(real):
    plan = residency.make_plan(real, None, residency.PRESETS[0], residency.budget_for(24))
    assert not plan.fits
    assert "DOES NOT FIT" in plan.text()


def test_small_cards_take_turns_or_stream(real):
    turns = residency.choose(real, None, residency.budget_for(16))
    assert turns.preset.mode == "turns"
    resident_peak = sum(p.weights for p in turns.parts)
    assert turns.peak < resident_peak  # only one phase on the card at a time
    stream = residency.choose(real, None, residency.budget_for(8))
    assert "slow" in stream.preset.note


def test_larger_images_need_more(real):
    budget = residency.budget_for(24)
    small = residency.make_plan(real, None, residency.PRESETS[1], budget, width=512, height=512)
    large = residency.make_plan(real, None, residency.PRESETS[1], budget)
    assert large.peak > small.peak


def test_the_folder_sizes_come_from_headers(tiny_checkpoint):
    total, linear = residency.part_bytes(tiny_checkpoint, "decoder")
    files = (tiny_checkpoint / "decoder-turbo").glob("*.safetensors")
    assert 0 < linear <= total <= sum(f.stat().st_size for f in files)


class OutOfMemoryPipeline:
    """Runs out of GPU memory at the 48 GB preset, works at any lower one."""

    def __init__(self, request, config):
        import torch

        self.precision = request.precision or "bf16"
        preset = residency.PRESETS[0 if self.precision == "bf16" else 1]
        plan = residency.make_plan(config, None, preset, residency.budget_for(24))
        self.settings = residency.Settings(preset.backbone, preset.decoder, plan)
        self.device, self.root = torch.device("cpu"), None
        self.backbone = torch.nn.Linear(2, 2)
        self.backbone.config = config
        self.image_tokenizer = self.decoder = None

    def generate(self, prompt, **options):
        import torch

        if self.precision == "bf16":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return type("Out", (), {"image": np.zeros((8, 8, 3), np.uint8), "metadata": {},
                                "thinking": None})()  # fmt: skip

    def status(self):
        return {}

    def unload(self):
        pass


def run_jobs(real, *requests):
    from engine import protocol as p
    from engine.worker import Worker

    events, loads = [], []

    def factory(request, on_progress):
        loads.append(request)
        return OutOfMemoryPipeline(request, real)

    worker = Worker(events.append, factory)
    for request in (*requests, p.Shutdown()):
        worker.accept(request)
    worker.run()
    return events, loads


@pytest.mark.parametrize("allowed", [True, False])
def test_out_of_memory_retries_once_at_a_lower_preset_if_allowed(real, tmp_path, allowed):
    from engine import protocol as p

    load = p.LoadModel("load", str(tmp_path), "cpu", allow_lower_preset=allowed)
    events, loads = run_jobs(real, load, p.Generate("g", "a fox", 256, 256))
    last = events[-1]
    if allowed:
        assert isinstance(last, p.Finished) and last.job_id == "g"
        assert [r.precision for r in loads] == [None, "int4"]
    else:
        assert isinstance(last, p.Failed) and last.code == "out_of_memory"
        assert "24 GB preset" in last.message and "would fit" in last.message
        assert len(loads) == 1


@pytest.mark.gpu
def test_backbone_and_decoder_take_turns_on_a_small_card_plan(tiny_checkpoint, real):
    from engine.pipeline import Pipeline, Turn

    pipeline = Pipeline.load(tiny_checkpoint, device="cuda", precision="int4")
    turns = residency.make_plan(real, None, residency.PRESETS[2], residency.budget_for(16))
    pipeline.settings = residency.Settings("int4", "int8", turns)
    first = pipeline.generate("a fox", width=256, height=256, seed=3)
    backbone_weight = next(pipeline.backbone.parameters())
    assert backbone_weight.device.type == "cpu" and backbone_weight.is_pinned()
    assert next(pipeline.decoder.dit.parameters()).is_cuda
    pipeline.understand([Turn("user", "What is this?", ())], gen_length=32)
    assert next(pipeline.backbone.parameters()).is_cuda
    assert not next(pipeline.decoder.dit.parameters()).is_cuda
    again = pipeline.generate("a fox", width=256, height=256, seed=3)
    assert (again.image == first.image).all()  # moving between turns changes nothing
