"""MaskLayer: soft dabs, gap-free lines, tile undo that restores exactly, polygon fill."""

import numpy as np
import pytest

from app.mask import TILE, MaskLayer, dab_kernel, polygon_mask


def test_hard_dab_covers_its_disc_and_soft_dab_falls_off():
    hard = dab_kernel(10, 1.0)
    assert hard.shape == (21, 21)
    assert hard[10, 10] == 255 and hard[10, 1] == 255  # 9 px from the centre: inside
    assert hard[10, 0] < 128  # 10 px: on the edge
    assert hard[0, 0] == 0
    soft = dab_kernel(10, 0.0)
    row = soft[10, 10:].astype(int)
    assert row[0] == 255 and row[-1] == 0
    assert np.all(np.diff(row) <= 0)  # falls monotonically
    assert 0 < row[5] < 255


def test_dab_at_the_image_corner_is_clipped():
    mask = MaskLayer(50, 40)
    rect = mask.dab(0, 0, 8, 1.0, erase=False)
    assert rect == (0, 0, 9, 9)
    assert mask.coverage[0, 0] == 255 and mask.coverage[20:, :].sum() == 0
    assert mask.dab(-100, -100, 8, 1.0, erase=False) is None


@pytest.mark.parametrize("radius", [1.0, 3.0, 40.0])
def test_a_line_leaves_no_gap(radius):
    mask = MaskLayer(300, 1200)
    mask.dab(10, 150, radius, 1.0, False)
    mask.line((10, 150), (1100, 150), radius, 1.0, False)
    assert (mask.as_bool()[150, 10:1101]).all()


def test_carry_keeps_spacing_over_many_short_segments():
    mask = MaskLayer(100, 400)
    carry = 0.0
    for x in np.arange(10, 300, 0.3):  # segments much shorter than the spacing
        _, carry = mask.line((x, 50), (x + 0.3, 50), 20, 1.0, False, carry)
    assert mask.as_bool()[50, 20:290].all()


def test_commit_undo_redo_restore_exactly_and_store_only_touched_tiles():
    rng = np.random.default_rng(0)
    mask = MaskLayer(1000, 1500)
    mask.coverage[...] = rng.integers(0, 256, mask.shape, dtype=np.uint8)
    before = mask.coverage.copy()
    mask.dab(300, 300, 20, 0.5, False)
    mask.line((300, 300), (600, 320), 20, 0.5, False)
    after = mask.coverage.copy()
    step = mask.commit()
    assert set(step.tiles) == {(1, 1), (1, 2)}
    assert step.bounds == (TILE, TILE, 2 * TILE, TILE)
    mask.undo(step)
    assert np.array_equal(mask.coverage, before)
    mask.redo(step)
    assert np.array_equal(mask.coverage, after)


def test_commit_without_change_gives_no_step():
    mask = MaskLayer(100, 100)
    mask.dab(50, 50, 5, 1.0, erase=True)  # erasing nothing
    assert mask.commit() is None


def test_eraser_lowers_coverage():
    mask = MaskLayer(100, 100)
    mask.set_region((0, 0, 100, 100), 255)
    mask.commit()
    mask.dab(50, 50, 10, 1.0, erase=True)
    assert mask.coverage[50, 50] == 0 and mask.coverage[50, 70] == 255


def test_polygon_mask_matches_pixel_centres():
    inside = polygon_mask([(0, 0), (10, 0), (10, 10), (0, 10)], (0, 0, 12, 12))
    assert inside[:10, :10].all() and not inside[10:, :].any() and not inside[:, 10:].any()
    triangle = polygon_mask([(0, 0), (20, 0), (0, 20)], (0, 0, 20, 20))
    ys, xs = np.mgrid[0:20, 0:20] + 0.5
    assert np.array_equal(triangle, xs + ys < 20)


def test_polygon_mask_in_bands_matches_the_plane_geometry():
    inside = polygon_mask([(0, 0), (5000, 0), (0, 2000)], (0, 0, 5000, 2000))  # 3 row bands
    ys, xs = np.mgrid[0:2000:7, 0:5000:11] + 0.5
    assert np.array_equal(inside[::7, ::11], xs / 5000 + ys / 2000 < 1)
