"""Checks that need a CUDA GPU (skipped without one): the same code paths in bf16 on the device."""

import numpy as np
import pytest
import torch

from engine.backbone import KVCache, load_backbone
from engine.pipeline import Pipeline
from engine.sampler import Layout

pytestmark = pytest.mark.gpu


def test_cached_step_matches_uncached_on_cuda_bf16(tiny_checkpoint):
    model = load_backbone(tiny_checkpoint, "cuda", torch.bfloat16)
    layout = Layout([list(range(20, 65))], torch.full((40,), 1), mask_id=1, B=32).to("cuda")
    cache = KVCache(model.config, 1, layout.blocks * 32, "cuda", torch.bfloat16)
    with torch.inference_mode():
        model(layout.ids[:, :32], layout.positions[:, :32], layout.mask(0, 32, 32), cache,
              store=True, last=0)  # fmt: skip
        cached = model(layout.ids[:, 32:64], layout.positions[:, 32:64], layout.mask(32, 64, 64),
                       cache)  # fmt: skip
        full = model(layout.ids[:, :64], layout.positions[:, :64], layout.mask(0, 64, 64), last=32)
    assert (cached - full).abs().max() < 0.1  # bf16 rounding only
    assert cached.argmax(-1).eq(full.argmax(-1)).float().mean() > 0.9


def test_pipeline_on_cuda_reproduces_with_a_seed(tiny_checkpoint):
    pipe = Pipeline.load(tiny_checkpoint, device="cuda")
    a = pipe.generate("a fox", width=256, height=256, seed=1)
    b = pipe.generate("a fox", width=256, height=256, seed=1)
    assert a.image.shape == (256, 256, 3) and np.array_equal(a.image, b.image)
    assert pipe.status()["device"].startswith("cuda")
