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


def test_the_cache_adds_no_forward_pass(confident_model):
    counts = {}
    for use_cache in (False, True):
        forwards: list[int] = []
        hook = confident_model.register_forward_hook(lambda *_, seen=forwards: seen.append(1))
        try:
            tokens = run(confident_model, gen_length=96, use_cache=use_cache, eos_id=-1)
        finally:
            hook.remove()
        counts[use_cache] = (len(forwards), tokens)
    assert counts[True] == counts[False]  # same passes, same tokens


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
    assert len(forwards) == 3  # the prompt goes into the cache within the first step's pass


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


def official_loop(model, prompt, *, gen_length, steps, threshold, mask_id, eos_id, draw):
    """facts §5.1 written out as the official LLaDA2.0 `generate`: no cache, the whole prefix
    every step, threshold acceptance. Returns (tokens, committed indices per forward)."""
    B, P = 32, len(prompt)
    blocks = -(-(P + gen_length) // B)
    x = torch.full((1, blocks * B), mask_id)
    x[0, :P] = torch.tensor(prompt)
    pos = torch.arange(blocks * B)[None]
    q = torch.arange(blocks * B)
    allowed = ((q[None, :] // B) <= (q[:, None] // B))[None, None]  # key block <= query block
    counts = [B // steps + (1 if s < B % steps else 0) for s in range(steps)]
    commits = []
    for blk in range(P // B, blocks):
        end = (blk + 1) * B
        for s in range(steps):
            active = x[0, end - B : end] == mask_id
            if not active.any():
                break
            logits = model(x[:, :end], pos[:, :end], allowed[..., :end, :end], last=B)[0]
            x0, p = draw(torch.softmax(logits.float(), dim=-1))
            conf = torch.where(active, p, float("-inf"))
            above = conf > threshold
            if int(above.sum()) >= counts[s]:
                chosen = above
            else:
                chosen = torch.zeros(B, dtype=torch.bool)
                chosen[conf.topk(min(counts[s], int(active.sum()))).indices] = True
            x[0, end - B : end] = torch.where(chosen, x0, x[0, end - B : end])
            where = (chosen.nonzero().squeeze(-1) + end - B - P).tolist()
            commits.append(([i for i in where if i < gen_length], int(chosen.sum()), counts[s]))
        if (x[0, P:end] == eos_id).any():
            break
    out = x[0, P : P + gen_length].tolist()
    return out[: out.index(eos_id)] if eos_id in out else out, commits


@pytest.fixture(scope="module")
def confident_model(tiny_checkpoint):
    """The tiny model with its head scaled, so that many drawn tokens pass 0.95 as a trained
    model's do; a model that is never confident cannot tell threshold acceptance apart."""
    model = load_backbone(tiny_checkpoint, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(15)
    return model


@pytest.mark.parametrize("mode", ["greedy", "multinomial"])
def test_baseline_commits_exactly_as_the_official_loop_at_threshold_095(confident_model, mode):
    def draw(probs):
        if mode == "greedy":
            p, tokens = probs.max(dim=-1)
            return tokens, p
        tokens = torch.multinomial(probs, 1, generator=reference_rng).squeeze(-1)
        return tokens, probs.gather(-1, tokens[:, None]).squeeze(-1)

    reference_rng = torch.Generator().manual_seed(5)
    with torch.inference_mode():
        expected, official = official_loop(
            confident_model, PROMPT, gen_length=64, steps=8, threshold=0.95, mask_id=MASK,
            eos_id=0, draw=draw,
        )  # fmt: skip
        ours = []
        tokens = run(
            confident_model,
            threshold=0.95,
            use_cache=False,  # the official baseline: threshold 0.95, no cache
            sampling=Sampling(zero_temperature=mode),
            generator=torch.Generator().manual_seed(5),
            on_step=lambda r: ours.append(sorted(i for i, _ in r.committed)),
        )
    assert tokens == expected
    assert ours == [sorted(where) for where, _, _ in official]
    # the threshold really decided: some steps committed more than their scheduled count
    assert any(n > count for _, n, count in official)
    assert any(n == count for _, n, count in official)  # and some took the top-k rule


def test_a_mask_token_in_the_prompt_is_kept_as_prompt_text(model):
    prompt = PROMPT[:36] + [MASK, 77, MASK, 78]  # typed <|mask|>s in the block being denoised
    seen = []
    hook = model.register_forward_hook(lambda mod, args, out: seen.append(args[0][0].clone()))
    committed = []
    try:
        out = denoise(
            model, [prompt], torch.full((64,), MASK), mask_id=MASK, steps=8, use_cache=False,
            on_step=lambda r: committed.extend(i for i, _ in r.committed),
        )  # fmt: skip
    finally:
        hook.remove()
    assert all(ids[: len(prompt)].tolist() == prompt for ids in seen)  # every forward sees it
    assert sorted(committed) == list(range(64)) and (out != MASK).all()
