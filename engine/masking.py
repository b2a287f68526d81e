"""Geometry of masked editing: plan the crop, map the mask to tokens, composite the result.

Pure numpy and PIL, torch-free: the remote backend composites in the GUI process. Boxes are
(left, top, right, bottom) in image pixels, right and bottom exclusive; sizes are
(width, height) as PIL has them; token grids are (rows, columns).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine.buckets import nearest_bucket
from engine.errors import BadInput

PATCH = 16  # image pixels per VQ token side, at the bucket size
MIN_MARGIN = 32  # context kept around the mask on each side, in image pixels
MIN_SIDE = 256  # smallest context box side, so a tiny mask still shows the model its surroundings

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class EditPlan:
    """Where a masked edit happens: the image box to crop and the bucket it is resized to."""

    image_hw: tuple[int, int]
    box: Box  # the crop, in image pixels
    bucket: tuple[int, int]  # (w, h) the crop is resized to before tokenizing
    grid: tuple[int, int]  # (rows, columns) of tokens: bucket h / 16, bucket w / 16
    mask_box: Box | None  # bounding box of the mask; None for a global edit
    is_global: bool  # empty mask: the whole image, cover-cropped to the bucket, is regenerated

    @property
    def box_size(self) -> tuple[int, int]:
        return self.box[2] - self.box[0], self.box[3] - self.box[1]


def validate_mask(mask: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """The mask as [H, W] bool, True = repaint: nonzero pixels of a bool or integer mask.

    A [H, W, C] mask uses its alpha channel (C = 2 or 4) when the alpha varies, else the maximum
    over its channels, so both painted-on-transparent and opaque black-and-white PNGs work.
    """
    mask = np.asarray(mask)
    if mask.dtype != bool and not np.issubdtype(mask.dtype, np.integer):
        raise BadInput(f"The mask must be a bool or 8-bit image, not {mask.dtype}.")
    if mask.ndim == 3:
        alpha = mask[..., -1]
        varies = mask.shape[2] in (2, 4) and alpha.min() != alpha.max()
        mask = alpha if varies else mask[..., : 1 if mask.shape[2] == 2 else 3].max(axis=2)
    if mask.ndim != 2:
        raise BadInput(f"The mask must be a [H, W] or [H, W, C] image, not shape {mask.shape}.")
    height, width = image_shape[:2]
    if mask.shape != (height, width):
        raise BadInput(
            f"The mask is {mask.shape[1]}x{mask.shape[0]} px but the image is {width}x{height} px;"
            " paint the mask on this image."
        )
    return mask if mask.dtype == bool else mask != 0


def plan_edit(
    image_hw: tuple[int, int],
    mask: np.ndarray,
    *,
    margin: float = 0.25,
    buckets: list[tuple[int, int]] | None = None,
) -> EditPlan:
    """Choose the crop of a masked edit: the mask's box plus context, fitted to a bucket's aspect.

    The context is `margin` times the mask box's longer side on every side, at least MIN_MARGIN px,
    and the box is at least MIN_SIDE px per side where the image allows. An empty mask plans a
    global edit: the smallest centred crop of the whole image that has the bucket's aspect.
    """
    if margin < 0:
        raise BadInput(f"The context margin must be zero or more, not {margin}.")
    height, width = image_hw[:2]
    mask = validate_mask(mask, (height, width))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        bucket = nearest_bucket(width, height, buckets)
        aspect = bucket[0] / bucket[1]  # crop the longer side: the smallest crop that covers
        w, h = (
            min(width, max(1, round(height * aspect))),
            min(height, max(1, round(width / aspect))),
        )
        box = ((width - w) // 2, (height - h) // 2, (width - w) // 2 + w, (height - h) // 2 + h)
        return EditPlan((height, width), box, bucket, _grid(bucket), None, True)
    mask_box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    grown = _grown_box(mask_box, width, height, margin)
    box, bucket = _fit_bucket(grown, mask_box, width, height, buckets)
    return EditPlan((height, width), box, bucket, _grid(bucket), mask_box, False)


def crop_to_bucket(image: np.ndarray, plan: EditPlan) -> np.ndarray:
    """The plan's box of `image` resized to its bucket: [bucket h, bucket w, C] uint8."""
    _check_image(image, plan)
    left, top, right, bottom = plan.box
    return _resize(image[top:bottom, left:right], plan.bucket)


def token_mask(mask: np.ndarray, plan: EditPlan, dilate: int = 1) -> np.ndarray:
    """[rows, columns] bool: the tokens to regenerate. All of them for a global edit.

    A token is marked when any masked pixel of the box overlaps its 16x16 px cell of the bucket
    (exact, from the box-to-bucket scale), then the marks grow by `dilate` tokens (8-neighbourhood).
    """
    if dilate < 0:
        raise BadInput(f"The token mask dilation must be zero or more, not {dilate}.")
    if plan.is_global:
        return np.ones(plan.grid, dtype=bool)
    left, top, right, bottom = plan.box
    inside = validate_mask(mask, plan.image_hw)[top:bottom, left:right]
    counts = _cell_sums(inside, plan.bucket[1], axis=0)  # [rows, box w]
    marked = _cell_sums(counts, plan.bucket[0], axis=1) > 0  # [rows, columns]
    for _ in range(dilate):
        padded = np.pad(marked, 1)
        marked = np.zeros_like(marked)
        for dy in range(3):
            for dx in range(3):
                marked |= padded[dy : dy + marked.shape[0], dx : dx + marked.shape[1]]
    return marked


def feathered_alpha(
    mask: np.ndarray, plan: EditPlan, grow: int = 8, feather: int = 16
) -> np.ndarray:
    """[H, W] float32 blend weight of the generated pixels: 1 on the mask grown by `grow` px,
    falling to 0 just past `feather` px beyond it, 0 outside the plan's box (all of the box for a
    global edit)."""
    height, width = plan.image_hw
    left, top, right, bottom = plan.box
    alpha = np.zeros((height, width), dtype=np.float32)
    alpha[top:bottom, left:right] = _box_alpha(
        validate_mask(mask, plan.image_hw), plan, grow, feather
    )
    return alpha


def composite(
    original: np.ndarray,
    generated: np.ndarray,
    plan: EditPlan,
    mask: np.ndarray,
    *,
    grow: int = 8,
    feather: int = 16,
    match_colour: bool = True,
) -> np.ndarray:
    """Blend the generated crop (any size; resized to the box) into a copy of `original`.

    Only pixels where `feathered_alpha` > 0 are written, so every other pixel is byte-identical to
    the original. Before blending, the generated crop's colours are pulled toward the original's on
    a ring just outside the blended region (not for a global edit, whose colours are the point).
    A global edit replaces the whole box; the thin strips its cover crop cut off stay as they were.
    The alpha is 1 on the whole mask when grow + feather fit in the plan's margin (MIN_MARGIN).
    """
    _check_image(original, plan)
    if (
        generated.ndim != 3
        or generated.shape[2] != original.shape[2]
        or generated.dtype != np.uint8
    ):
        raise BadInput(
            f"The generated image is {generated.shape} {generated.dtype}, not 8-bit with"
            f" {original.shape[2]} channels."
        )
    left, top, right, bottom = plan.box
    alpha = _box_alpha(validate_mask(mask, plan.image_hw), plan, grow, feather)  # [h, w]
    source = original[top:bottom, left:right].astype(np.float32)
    fresh = _resize(generated, plan.box_size).astype(np.float32)
    inside = alpha > 0
    if match_colour and not plan.is_global:
        fresh = _match_colour(fresh, source, inside, ring=max(feather, 8))
    weight = alpha[inside][:, None]  # [n, 1]
    blended = weight * fresh[inside] + (1 - weight) * source[inside]
    result = original.copy()
    result[top:bottom, left:right][inside] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return result


def region_crop(image: np.ndarray, mask: np.ndarray, margin: float = 0.25) -> np.ndarray:
    """The masked region with its context (the plan's box before bucket fitting), not resized.

    For questions about a region; an empty mask gives the whole image.
    """
    if image.ndim != 3:
        raise BadInput(f"The image must be [H, W, C], not shape {image.shape}.")
    height, width = image.shape[:2]
    plan = plan_edit((height, width), mask, margin=margin)
    if plan.is_global:
        return image.copy()
    left, top, right, bottom = _grown_box(plan.mask_box, width, height, margin)
    return image[top:bottom, left:right].copy()


def _grid(bucket: tuple[int, int]) -> tuple[int, int]:
    return bucket[1] // PATCH, bucket[0] // PATCH


def _grown_box(mask_box: Box, width: int, height: int, margin: float) -> Box:
    left, top, right, bottom = mask_box
    pad = max(MIN_MARGIN, round(margin * max(right - left, bottom - top)))
    lo_x, hi_x = max(0, left - pad), min(width, right + pad)
    lo_y, hi_y = max(0, top - pad), min(height, bottom + pad)
    w, h = min(width, max(hi_x - lo_x, MIN_SIDE)), min(height, max(hi_y - lo_y, MIN_SIDE))
    x, y = _place(lo_x, hi_x, w, width), _place(lo_y, hi_y, h, height)
    return x, y, x + w, y + h


def _fit_bucket(
    grown: Box, mask_box: Box, width: int, height: int, buckets: list[tuple[int, int]] | None
) -> tuple[Box, tuple[int, int]]:
    """The smallest box of the bucket's aspect that holds `grown`, moved inside the image.

    Where the image is too small for that aspect, the box takes the whole image in that direction,
    trims context in the other toward the aspect (never cutting the mask), and the bucket is
    re-picked for what fits; the small aspect mismatch left is a slight stretch of the crop.
    """
    gw, gh = grown[2] - grown[0], grown[3] - grown[1]
    mw, mh = mask_box[2] - mask_box[0], mask_box[3] - mask_box[1]
    bucket = nearest_bucket(gw, gh, buckets)
    aspect = bucket[0] / bucket[1]
    w, h = max(gw, round(gh * aspect)), max(gh, round(gw / aspect))
    if h > height or w > width:
        if h > height:
            w, h = max(mw, min(gw, round(height * aspect))), height
        else:
            w, h = width, max(mh, min(gh, round(width / aspect)))
        bucket = nearest_bucket(w, h, buckets)
        w, h = _cover(w, h, bucket, width, height)
    span_x = grown[::2] if w >= gw else mask_box[::2]
    span_y = grown[1::2] if h >= gh else mask_box[1::2]
    x, y = _place(*span_x, w, width), _place(*span_y, h, height)
    return (x, y, x + w, y + h), bucket


def _cover(w: int, h: int, bucket: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """Grow (w, h) on one side toward the bucket's aspect, within width x height."""
    aspect = bucket[0] / bucket[1]
    if w / h > aspect:
        return w, min(height, max(h, round(w / aspect)))
    return min(width, max(w, round(h * aspect))), h


def _place(lo: int, hi: int, size: int, limit: int) -> int:
    """Start of a `size` span centred on [lo, hi) that holds [lo, hi) and lies in [0, limit)."""
    start = round((lo + hi - size) / 2)
    start = min(max(start, hi - size), lo)
    return min(max(start, 0), limit - size)


def _cell_sums(values: np.ndarray, bucket_side: int, axis: int) -> np.ndarray:
    """Sum `values` along `axis` over the box pixels that overlap each token cell of the bucket.

    Token j covers bucket pixels [16j, 16j+16), that is box pixels [16j*n/b, 16(j+1)*n/b) for n box
    and b bucket pixels; pixel x overlaps it when x is in [floor(start), ceil(end)).
    """
    n = values.shape[axis]
    edges = np.arange(bucket_side // PATCH + 1) * PATCH * n
    starts, ends = edges[:-1] // bucket_side, -(-edges[1:] // bucket_side)
    totals = np.cumsum(values, axis=axis, dtype=np.int32)
    totals = np.concatenate([np.zeros_like(totals.take([0], axis=axis)), totals], axis=axis)
    return totals.take(ends, axis=axis) - totals.take(starts, axis=axis)


def _window_sums(values: np.ndarray, ry: int, rx: int, pad: str = "constant") -> np.ndarray:
    """Sum over the (2ry+1) x (2rx+1) window around each pixel, via cumulative sums: O(pixels)."""
    for axis, r in ((0, ry), (1, rx)):
        if r == 0:
            continue
        widths = [(0, 0), (0, 0)]
        widths[axis] = (r + 1, r)  # one extra leading pad makes the differences line up
        kind = np.float64 if values.dtype.kind == "f" else np.int32
        totals = np.cumsum(np.pad(values, widths, mode=pad), axis=axis, dtype=kind)
        n = values.shape[axis]
        values = totals.take(np.arange(2 * r + 1, n + 2 * r + 1), axis=axis) - totals.take(
            np.arange(n), axis=axis
        )
    return values


def _dilate(mask: np.ndarray, ry: int, rx: int) -> np.ndarray:
    return _window_sums(mask.astype(np.int32), ry, rx) > 0


def _dilate_round(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilate by an octagon of `radius`: the union of three rectangles, close to a disk."""
    if radius == 0:
        return mask
    short, mid = round(radius * 0.41), round(radius * 0.71)
    shapes = ((radius, short), (short, radius), (mid, mid))
    return np.logical_or.reduce([_dilate(mask, ry, rx) for ry, rx in shapes])


def _box_alpha(mask: np.ndarray, plan: EditPlan, grow: int, feather: int) -> np.ndarray:
    """feathered_alpha on the plan's box only: [box h, box w] float32."""
    if grow < 0 or feather < 0:
        raise BadInput(f"Grow and feather must be zero or more, not {grow} and {feather}.")
    if plan.is_global:
        return np.ones(plan.box_size[::-1], dtype=np.float32)
    left, top, right, bottom = plan.box
    grown = _dilate_round(mask[top:bottom, left:right], grow)
    r = feather // 2
    # A box blur of radius r over the grown mask dilated by r: exactly 1 on the grown mask, a linear
    # ramp down to exactly 0 at 2r ~ feather px beyond it. Integer counts keep the 0 and 1 exact.
    reach = _dilate(grown, r, r)
    alpha = (_window_sums(reach.astype(np.int32), r, r, pad="edge") / (2 * r + 1) ** 2).astype(
        np.float32
    )
    # Fade out toward box sides inside the image, so a large grow or feather never ends in a cut.
    height, width = plan.image_hw
    ramp = max(feather, 1)
    for axis, lo, hi, limit in ((1, left, right, width), (0, top, bottom, height)):
        n = hi - lo
        fade = np.ones(n, dtype=np.float32)
        distance = np.arange(n, dtype=np.float32)
        if lo > 0:
            fade = np.minimum(fade, distance / ramp)
        if hi < limit:
            fade = np.minimum(fade, distance[::-1] / ramp)
        alpha *= fade[None, :] if axis == 1 else fade[:, None]
    return alpha


def _match_colour(fresh: np.ndarray, source: np.ndarray, inside: np.ndarray, ring: int):
    """Shift `fresh` [h, w, 3] float32 by a smooth offset that makes it match `source` on a ring of
    `ring` px around `inside`: local differences near the ring, their global mean far from it."""
    around = _dilate(inside, ring, ring) & ~inside
    count = int(around.sum())
    if count < 16:  # the blend covers (nearly) the whole box: nothing to measure against
        return fresh
    difference = np.where(around[..., None], source - fresh, 0.0).astype(np.float32)  # [h, w, 3]
    mean = difference.sum(axis=(0, 1)) / count  # [3]
    # Normalised convolution on a coarse grid of about 32 cells on the longer side.
    height, width = inside.shape
    longer = max(height, width)
    cells = (max(1, round(32 * width / longer)), max(1, round(32 * height / longer)))
    layers = [*np.moveaxis(difference, 2, 0), around.astype(np.float32)]
    coarse = np.stack([_resize_float(layer, cells, Image.Resampling.BOX) for layer in layers])
    for _ in range(2):  # two box passes of radius 2 cells: a smooth tent
        coarse = np.stack([_window_sums(layer, 2, 2, pad="edge") / 25 for layer in coarse])
    settle = 0.05  # weight of the global mean; wins where the ring is far away
    offset = (coarse[:3] + settle * mean[:, None, None]) / (coarse[3] + settle)  # [3, ch, cw]
    full = [_resize_float(layer, (width, height), Image.Resampling.BILINEAR) for layer in offset]
    return fresh + np.stack(full, axis=2)


def _resize_float(layer: np.ndarray, size: tuple[int, int], method) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(layer, dtype=np.float32))
    return np.asarray(image.resize(size, method))


def _resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 [h, w, C] to size (w, h): LANCZOS when shrinking, BICUBIC when enlarging."""
    if pixels.shape[1::-1] == tuple(size):
        return pixels
    shrink = size[0] * size[1] < pixels.shape[0] * pixels.shape[1]
    method = Image.Resampling.LANCZOS if shrink else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).resize(size, method))


def _check_image(image: np.ndarray, plan: EditPlan) -> None:
    if image.ndim != 3 or image.shape[:2] != plan.image_hw or image.dtype != np.uint8:
        height, width = plan.image_hw
        raise BadInput(
            f"The image must be {width}x{height} px and 8-bit, not {image.shape} {image.dtype}."
        )
