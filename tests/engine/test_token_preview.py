"""The live token preview: a colour per code, grey while masked, sent with each denoise step."""

import numpy as np
import pytest
import torch

from engine.pipeline import Pipeline
from engine.token_preview import MASKED, PREVIEW_SIDE, TokenPalette


def test_palette_is_fixed_and_spreads_codes_over_colours():
    table = torch.randn(512, 64, generator=torch.Generator().manual_seed(1))
    a, b = TokenPalette.from_table(table), TokenPalette.from_table(table)
    assert np.array_equal(a.colours, b.colours)
    assert a.colours.shape == (513, 3) and a.colours.dtype == np.uint8
    assert len(np.unique(a.colours[:-1], axis=0)) > 400  # codes are told apart
    assert a.colours[:-1].min() == 0 and a.colours[:-1].max() == 255


def test_codes_that_share_a_row_share_a_colour():
    table = torch.randn(64, 16, generator=torch.Generator().manual_seed(2))
    table[7] = table[3]
    palette = TokenPalette.from_table(table)
    assert np.array_equal(palette.colours[7], palette.colours[3])


def test_paint_keeps_masked_tokens_grey_in_whole_token_blocks():
    palette = TokenPalette(np.arange(30, dtype=np.uint8).reshape(10, 3))
    codes = np.array([[0, -1], [9, 157000]])  # -1 and out of range: still masked
    picture = palette.paint(codes)
    s = PREVIEW_SIDE // 2
    assert picture.shape == (2 * s, 2 * s, 3)
    assert (picture[:s, :s] == [0, 1, 2]).all() and (picture[s:, :s] == [27, 28, 29]).all()
    assert (picture[:s, s:] == MASKED).all() and (picture[s:, s:] == MASKED).all()


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint):
    return Pipeline.load(tiny_checkpoint, device="cpu")


def test_generate_sends_a_token_picture_per_denoise_step_ending_in_the_result(pipeline):
    held, tokens, steps = [], [], []

    def on_progress(stage, step, total):
        if stage == "denoise tokens":  # the worker sends a held picture with the next progress
            steps.append(step)
            tokens.append(held.pop())
        held.clear()

    out = pipeline.generate(
        "a fox", width=256, height=320, seed=1, steps=4, on_progress=on_progress,
        on_preview=held.append,
    )  # fmt: skip
    assert len(tokens) == len(steps) > 0
    grey = [(t.reshape(-1, 3) == MASKED).all(1).mean() for t in tokens]
    assert grey == sorted(grey, reverse=True) and grey[-1] == 0  # tokens only ever commit
    scale = PREVIEW_SIDE // 10  # a 10x8 token grid, whole pixels per token
    assert tokens[-1].shape == (10 * scale, 8 * scale, 3)
    assert np.array_equal(tokens[-1], pipeline._palette.paint(out.codes))
