"""Block diffusion sampling on the tiny backbone: schedule, seeds, cancel, stop, cache parity."""

import pytest
import torch

from engine.backbone import load_backbone
from engine.errors import Cancelled
from engine.sampler import (
    Sampling,
    choose_commits,
    denoise,
    generate_text,
    transfer_counts,
)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_backbone(tiny_checkpoint, dtype=torch.float32)


PROMPT = list(range(20, 60))  # 40 tokens: the first generated block holds the prompt tail
MASK = 1


def run(model, **kw):
    kw = {"gen_length": 64, "steps": 8, "mask_id": MASK, "eos_id": 0} | kw
    return generate_text(model, PROMPT, **kw)


def test_transfer_schedule_is_the_official_one():
    assert transfer_counts(32, 32) == [1] * 32
    assert transfer_counts(32, 8) == [4] * 8
    assert transfer_counts(32, 5) == [7, 7, 6, 6, 6]


def test_threshold_commits_all_confident_tokens_or_the_top_k():
    conf = torch.tensor([0.99, 0.2, float("-inf"), 0.97, 0.5])
    assert choose_commits(conf, 1, 0.95).tolist() == [True, False, False, True, False]
    assert choose_commits(conf, 3, 0.95).tolist() == [True, False, False, True, True]
    assert choose_commits(conf, 9, None).tolist() == [True, True, False, True, True]


def test_greedy_is_deterministic_and_cache_does_not_change_tokens(model):
    a, b = run(model), run(model, use_cache=False)
    assert a == b and len(a) > 0


def test_same_seed_reproduces_multinomial_sampling(model):
    sampling = Sampling(temperature=0.0, zero_temperature="multinomial")
    outs = [
        run(model, sampling=sampling, generator=torch.Generator().manual_seed(seed))
        for seed in (7, 7, 8)
    ]
    assert outs[0] == outs[1] != outs[2]


def test_cancel_stops_between_steps(model):
    calls = []

    def on_step(report):
        calls.append(report.step)
        if report.step == 3:
            raise Cancelled

    forwards = []
    hook = model.register_forward_hook(lambda *a: forwards.append(1))
    try:
        with pytest.raises(Cancelled):
            run(model, on_step=on_step)
    finally:
        hook.remove()
    assert calls == [1, 2, 3]
    prefix_fill = 1  # the prompt's whole block goes into the cache once
    assert len(forwards) == prefix_fill + 3


def test_on_step_streams_each_committed_token_once(model):
    seen = {}

    def on_step(report):
        for index, token in report.committed:
            assert index not in seen
            seen[index] = token
        assert report.step <= report.total

    tokens = denoise(
        model, [PROMPT], torch.full((64,), MASK), mask_id=MASK, steps=8, on_step=on_step
    )
    assert sorted(seen) == list(range(64))
    assert [seen[i] for i in range(64)] == tokens.tolist()


def test_stop_token_ends_the_run_after_its_block(model):
    full = denoise(model, [PROMPT], torch.full((96,), MASK), mask_id=MASK, steps=8).tolist()
    stop = full[30]  # committed in the second generated block (indices 24..55)
    first_stop = full.index(stop)
    out = denoise(
        model, [PROMPT], torch.full((96,), MASK), mask_id=MASK, steps=8, stop_ids=[stop]
    ).tolist()
    block_end = 24 if first_stop < 24 else 56
    assert out[:block_end] == full[:block_end]
    assert all(t == MASK for t in out[block_end:])
    assert run(model, gen_length=96, eos_id=stop) == full[:first_stop]


def test_fixed_tokens_are_never_changed(model):
    init = torch.full((64,), MASK)
    init[::3] = 123
    out = denoise(model, [PROMPT], init, mask_id=MASK, steps=8)
    assert (out[::3] == 123).all() and (out != MASK).all()
