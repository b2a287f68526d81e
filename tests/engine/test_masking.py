"""Masked edits: plans fit buckets, token masks are exact, composites touch only the mask."""

import time
import tracemalloc

import numpy as np
import pytest

from engine.errors import BadInput
from engine.masking import (
    MIN_MARGIN,
    MIN_SIDE,
    PATCH,
    composite,
    crop_to_bucket,
    feathered_alpha,
    plan_edit,
    region_crop,
    token_mask,
    validate_mask,
)
from engine.vision import edit_buckets, nearest_bucket

BUCKETS = set(edit_buckets())


def box_mask(height, width, box):
    left, top, right, bottom = box
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def smooth_image(height, width, seed=0):
    """A photo-like picture: smooth colour gradients plus a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [
        120 + 60 * np.sin(xx / 97 + c) * np.cos(yy / 71 - c) + rng.normal(0, 2, (height, width))
        for c in range(3)
    ]
    return np.clip(np.stack(channels, axis=2), 0, 255).astype(np.uint8)


def check_plan(plan, mask_box):
    height, width = plan.image_hw
    left, top, right, bottom = plan.box
    assert 0 <= left < right <= width and 0 <= top < bottom <= height
    assert plan.bucket in BUCKETS
    assert plan.grid == (plan.bucket[1] // PATCH, plan.bucket[0] // PATCH)
    if mask_box is not None:
        ml, mt, mr, mb = mask_box
        assert plan.mask_box == mask_box
        assert left <= ml and top <= mt and mr <= right and mb <= bottom


CASES = [  # (height, width), mask box (left, top, right, bottom)
    ((3000, 4000), (0, 0, 50, 50)),  # top-left corner
    ((3000, 4000), (3900, 2950, 4000, 3000)),  # bottom-right corner
    ((3000, 4000), (1800, 0, 2300, 40)),  # top edge, wide
    ((3000, 4000), (1999, 1499, 2002, 1502)),  # tiny, centre
    ((3000, 4000), (500, 700, 900, 2600)),  # tall
    ((3000, 4000), (100, 1500, 3900, 1504)),  # a long thin line
    ((2000, 600), (10, 900, 590, 1000)),  # portrait image, mask nearly its full width
    ((600, 2000), (1200, 100, 1500, 500)),  # landscape
    ((720, 1280), (600, 300, 700, 420)),
    ((30, 40), (3, 3, 5, 5)),  # tiny image
    ((300, 300), (0, 0, 300, 300)),  # full
    ((1000, 700), (0, 0, 700, 1000)),  # full, not a bucket aspect
]


@pytest.mark.parametrize("image_hw, mask_box", CASES)
def test_plan_fits_a_bucket_around_the_mask(image_hw, mask_box):
    height, width = image_hw
    plan = plan_edit(image_hw, box_mask(height, width, mask_box))
    check_plan(plan, mask_box)
    assert not plan.is_global
    box_w, box_h = plan.box_size
    ml, mt, mr, mb = mask_box
    aspect_error = abs(np.log(box_w / box_h * plan.bucket[1] / plan.bucket[0]))
    if box_w < width and box_h < height:
        # Room on both axes: the exact bucket aspect (up to a pixel of rounding) and full context.
        assert aspect_error <= 1.5 / min(box_w, box_h)
        assert plan.box[0] <= max(0, ml - MIN_MARGIN) and plan.box[1] <= max(0, mt - MIN_MARGIN)
        assert plan.box[2] >= min(width, mr + MIN_MARGIN)
        assert plan.box[3] >= min(height, mb + MIN_MARGIN)
        assert min(box_w, box_h) >= min(MIN_SIDE, width, height)
    else:
        # The image limits one axis: the bucket is the best aspect for what fits.
        assert plan.bucket == nearest_bucket(box_w, box_h)


def test_tiny_mask_gets_context():
    plan = plan_edit((3000, 4000), box_mask(3000, 4000, (2000, 1500, 2004, 1504)))
    assert min(plan.box_size) >= MIN_SIDE
    assert max(plan.box_size) <= 2 * MIN_SIDE  # context, not half the photo


def test_full_mask_plans_the_whole_image():
    plan = plan_edit((1000, 700), np.ones((1000, 700), dtype=bool))
    assert plan.box == (0, 0, 700, 1000) and not plan.is_global
    assert plan.bucket == nearest_bucket(700, 1000)
    assert token_mask(np.ones((1000, 700), dtype=bool), plan).all()
    alpha = feathered_alpha(np.ones((1000, 700), dtype=bool), plan)
    assert (alpha == 1).all()


@pytest.mark.parametrize("image_hw", [(3000, 4000), (1000, 700), (30, 40), (256, 1500)])
def test_empty_mask_is_a_global_cover_crop(image_hw):
    height, width = image_hw
    empty = np.zeros(image_hw, dtype=bool)
    plan = plan_edit(image_hw, empty)
    check_plan(plan, None)
    assert plan.is_global and plan.mask_box is None
    assert plan.bucket == nearest_bucket(width, height)
    box_w, box_h = plan.box_size
    assert box_w == width or box_h == height  # the smallest crop: one side is whole
    assert abs(np.log(box_w / box_h * plan.bucket[1] / plan.bucket[0])) <= 1 / min(box_w, box_h)
    assert token_mask(empty, plan).all()
    assert crop_to_bucket(np.zeros((height, width, 3), np.uint8), plan).shape[1::-1] == plan.bucket


def test_huge_image_plans_and_composites_on_the_box_only():
    height, width = 3000, 4000
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = box_mask(height, width, (1800, 1300, 2100, 1600))  # 300x300
    tracemalloc.start()
    plan = plan_edit((height, width), mask)
    plan_peak = tracemalloc.get_traced_memory()[1]
    generated = smooth_image(2 * plan.bucket[1], 2 * plan.bucket[0], seed=1)
    tracemalloc.reset_peak()
    start = time.perf_counter()
    result = composite(image, generated, plan, mask)
    seconds = time.perf_counter() - start
    composite_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert plan_peak < 2**20  # no image-sized temporaries for a bool mask
    assert composite_peak < image.nbytes + 20 * 2**20  # the output copy plus box-sized work
    assert seconds < 1.0
    assert result.shape == image.shape


@pytest.mark.parametrize("generated_scale", [1, 2])
def test_pixels_outside_the_feathered_alpha_are_untouched(generated_scale):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (400, 600, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:400, 0:600]
    mask = (yy - 180) ** 2 + (xx - 420) ** 2 < 50**2
    mask[20:30, 580:600] = True  # a second stroke touching the image edge
    plan = plan_edit((400, 600), mask)
    bucket_w, bucket_h = plan.bucket
    generated = rng.integers(0, 256, (generated_scale * bucket_h, generated_scale * bucket_w, 3))
    result = composite(image, generated.astype(np.uint8), plan, mask, grow=6, feather=10)
    alpha = feathered_alpha(mask, plan, grow=6, feather=10)
    outside = alpha == 0
    assert np.array_equal(result[outside], image[outside])
    assert (result[alpha == 1] != image[alpha == 1]).any()
    # Alpha: 1 on the mask and within `grow` of it, 0 past `feather` beyond that.
    assert (alpha[mask] == 1).all()
    edge = 420 + 49  # the circle's last column on row 180
    assert alpha[180, edge + 6] == 1 and alpha[180, edge + 6 + 10] > 0
    assert alpha[180, edge + 6 + 11] == 0
    assert (alpha[14:36, 580:600] == 1).all()  # no fade at the image's own edge


def test_global_edit_replaces_the_cover_crop():
    image = smooth_image(300, 500)
    empty = np.zeros((300, 500), bool)
    plan = plan_edit((300, 500), empty)
    generated = np.full((plan.bucket[1], plan.bucket[0], 3), 7, np.uint8)
    result = composite(image, generated, plan, empty)
    left, top, right, bottom = plan.box
    assert (result[top:bottom, left:right] == 7).all()
    outside = feathered_alpha(empty, plan) == 0
    assert outside.sum() == 300 * 500 - (right - left) * (bottom - top)
    assert np.array_equal(result[outside], image[outside])


def test_alpha_never_reaches_the_box_sides_inside_the_image():
    mask = box_mask(1000, 1000, (480, 480, 520, 520))
    plan = plan_edit((1000, 1000), mask)
    alpha = feathered_alpha(mask, plan, grow=200, feather=200)  # far larger than the margin
    left, top, right, bottom = plan.box
    assert (alpha[top, left:right] == 0).all() and (alpha[bottom - 1, left:right] == 0).all()
    assert (alpha[top:bottom, left] == 0).all() and (alpha[top:bottom, right - 1] == 0).all()


def reference_token_mask(mask, plan):
    """Token (i, j) is marked when a masked box pixel overlaps its cell, by integer arithmetic."""
    left, top, right, bottom = plan.box
    inside = mask[top:bottom, left:right]
    box_w, box_h = plan.box_size
    bucket_w, bucket_h = plan.bucket
    xs, ys = np.arange(box_w), np.arange(box_h)
    marked = np.zeros(plan.grid, dtype=bool)
    for i in range(plan.grid[0]):
        rows = (ys * bucket_h < PATCH * (i + 1) * box_h) & ((ys + 1) * bucket_h > PATCH * i * box_h)
        for j in range(plan.grid[1]):
            cols = xs * bucket_w < PATCH * (j + 1) * box_w
            cols &= (xs + 1) * bucket_w > PATCH * j * box_w
            marked[i, j] = inside[np.ix_(rows, cols)].any()
    return marked


@pytest.mark.parametrize("image_hw", [(3000, 4000), (500, 700), (40, 30)])
def test_token_mask_marks_every_touched_token_and_dilates_by_one_ring(image_hw):
    rng = np.random.default_rng(image_hw[0])
    height, width = image_hw
    mask = np.zeros(image_hw, dtype=bool)
    y, x = height // 3, width // 2
    mask[y : y + max(1, height // 10), x : x + max(1, width // 12)] = True
    mask[rng.integers(0, height, 5), rng.integers(0, width, 5)] = True  # stray single pixels
    plan = plan_edit(image_hw, mask)
    marked = token_mask(mask, plan, dilate=0)
    assert np.array_equal(marked, reference_token_mask(mask, plan))
    padded = np.pad(marked, 1)
    ring = np.lib.stride_tricks.sliding_window_view(padded, (3, 3)).any(axis=(2, 3))
    assert np.array_equal(token_mask(mask, plan), ring)
    assert np.array_equal(token_mask(mask, plan, dilate=2) & ~ring, ring_of(ring))


def ring_of(marked):
    padded = np.pad(marked, 1)
    grown = np.lib.stride_tricks.sliding_window_view(padded, (3, 3)).any(axis=(2, 3))
    return grown & ~marked


@pytest.mark.parametrize("drift", ["flat", "gradient"])
def test_colour_matching_hides_a_decoder_colour_shift(drift):
    image = smooth_image(600, 800)
    mask = box_mask(600, 800, (300, 200, 500, 380))
    plan = plan_edit((600, 800), mask)
    # What a decoder with a colour cast gives back: the source crop, shifted, with new content.
    generated = crop_to_bucket(image, plan).astype(np.float32)
    shift = np.array([18.0, -12.0, 9.0])
    if drift == "gradient":
        shift = shift * np.linspace(0.2, 1.6, generated.shape[1])[None, :, None]
    generated = generated + shift
    generated[100:300, 150:350] = (40, 160, 90)
    generated = np.clip(generated, 0, 255).astype(np.uint8)
    alpha = feathered_alpha(mask, plan)
    seam = (alpha > 0) & (alpha < 1)

    def seam_error(match):
        result = composite(image, generated, plan, mask, match_colour=match)
        return np.abs(result[seam].astype(float) - image[seam]).mean()

    assert seam_error(True) < 0.3 * seam_error(False)


def test_crop_to_bucket_sizes():
    image = smooth_image(300, 500)
    for box in [(10, 10, 20, 20), (0, 0, 500, 300), (100, 50, 400, 250)]:
        plan = plan_edit((300, 500), box_mask(300, 500, box))
        crop = crop_to_bucket(image, plan)
        assert crop.shape == (plan.bucket[1], plan.bucket[0], 3) and crop.dtype == np.uint8


def test_region_crop_holds_the_mask_with_context():
    image = smooth_image(900, 1200)
    mask = box_mask(900, 1200, (600, 400, 700, 460))
    crop = region_crop(image, mask)
    assert MIN_SIDE <= crop.shape[0] < 900 and MIN_SIDE <= crop.shape[1] < 1200
    assert np.array_equal(region_crop(image, np.zeros((900, 1200), bool)), image)


def test_mask_of_another_size_is_one_sentence():
    with pytest.raises(BadInput, match=r"mask is 640x480 px but the image is 800x600 px"):
        plan_edit((600, 800), np.zeros((480, 640), dtype=bool))


def test_mask_formats():
    shape = (20, 30)
    painted = box_mask(20, 30, (5, 5, 10, 10))
    grey = painted.astype(np.uint8) * 255
    rgba_painted = np.zeros((20, 30, 4), np.uint8)
    rgba_painted[..., :3] = 255  # white everywhere; the alpha holds the strokes
    rgba_painted[..., 3] = grey
    rgba_opaque = np.dstack([grey, grey, grey, np.full(shape, 255, np.uint8)])
    grey_alpha = np.dstack([grey, np.full(shape, 255, np.uint8)])
    for mask in [
        painted,
        grey,
        grey // 200,
        grey[..., None],
        rgba_painted,
        rgba_opaque,
        grey_alpha,
    ]:
        assert np.array_equal(validate_mask(mask, (20, 30, 3)), painted)
    with pytest.raises(BadInput, match="bool or 8-bit"):
        validate_mask(painted.astype(np.float32), shape)
    with pytest.raises(BadInput, match="shape"):
        validate_mask(np.zeros((1, 20, 30, 1), bool), shape)


def test_bad_parameters_are_bad_input():
    mask = box_mask(100, 100, (10, 10, 20, 20))
    plan = plan_edit((100, 100), mask)
    with pytest.raises(BadInput):
        plan_edit((100, 100), mask, margin=-1)
    with pytest.raises(BadInput):
        feathered_alpha(mask, plan, grow=-1)
    with pytest.raises(BadInput, match="100x100 px"):
        crop_to_bucket(np.zeros((50, 100, 3), np.uint8), plan)
    with pytest.raises(BadInput, match="8-bit"):
        composite(np.zeros((100, 100, 3), np.uint8), np.zeros((64, 64, 3)), plan, mask)
