"""MaskLayer: the full-resolution inpainting mask as uint8 coverage, painted with soft round dabs.

Coverage 0 leaves a pixel alone and 255 repaints it; values between come from soft brush edges.
The engine takes a bool mask: a pixel is repainted where coverage >= THRESHOLD (half way), so a
soft edge repaints up to the middle of its falloff (`MaskLayer.as_bool`).

Undo never copies the whole mask. A change is a transaction: before a region is written, the
256-px tiles it touches are saved once (`_save_tiles`); `commit` pairs each saved tile with its new
content, drops tiles that did not change and keeps both zlib-compressed in a `TileStep`. A 24-MP
photo has 384 tiles; a brush stroke touches a handful, and even a fill of the whole mask compresses
to a few kilobytes because uniform tiles compress to almost nothing. No widgets and no Qt here.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

TILE = 256  # side of an undo tile, in image pixels
THRESHOLD = 128  # coverage at or above which the engine repaints a pixel
FULL = 255
DAB_SPACING = 0.15  # distance between dabs along a stroke, as a fraction of the radius
MIN_RADIUS = 0.5


Rect = tuple[int, int, int, int]  # x, y, width, height in image pixels


def _pack(tile: np.ndarray) -> bytes:
    return zlib.compress(np.ascontiguousarray(tile).tobytes(), 1)


def _unpack(data: bytes, shape: tuple[int, int]) -> np.ndarray:
    return np.frombuffer(zlib.decompress(data), np.uint8).reshape(shape)


@dataclass(frozen=True)
class TileStep:
    """One undoable mask change: each touched tile's content before and after, compressed."""

    tiles: dict[tuple[int, int], tuple[bytes, bytes]]  # (row, col) -> (before, after)
    bounds: Rect  # the image rect the change covers, for repainting

    @property
    def nbytes(self) -> int:
        return sum(len(before) + len(after) for before, after in self.tiles.values())


@dataclass(frozen=True)
class InvertStep:
    """Inverting is its own inverse, so its undo step stores nothing."""

    bounds: Rect
    nbytes: int = 0


MaskStep = TileStep | InvertStep


@lru_cache(maxsize=32)
def dab_kernel(radius: float, hardness: float) -> np.ndarray:
    """A round dab's coverage, [2n+1, 2n+1] uint8 centred on its middle pixel, n = ceil(radius).

    Full coverage out to `hardness * radius`, then a smooth fall to 0 at `radius`. Each pixel is
    measured at its centre, so a dab centred on a pixel is symmetric. Cached: a stroke reuses it.
    """
    radius = max(float(radius), MIN_RADIUS)
    n = int(np.ceil(radius))
    offsets = np.arange(-n, n + 1, dtype=np.float32)
    distance = np.sqrt(offsets[:, None] ** 2 + offsets[None, :] ** 2)
    inner = radius * min(max(hardness, 0.0), 1.0)
    if radius - inner < 0.75:  # a hard dab: antialias its edge over about one pixel
        inner = max(radius - 0.75, 0.0)
    t = np.clip((radius - distance) / (radius - inner), 0.0, 1.0)
    falloff = t * t * (3 - 2 * t)  # smoothstep
    kernel = np.rint(falloff * FULL).astype(np.uint8)
    kernel.setflags(write=False)
    return kernel


class MaskLayer:
    """The mask's pixels and the bookkeeping of one open change (stroke, fill, selection)."""

    def __init__(self, height: int, width: int):
        self.coverage = np.zeros((height, width), np.uint8)  # [H, W], 0 keep .. 255 repaint
        self._saved: dict[tuple[int, int], bytes] = {}  # tiles saved in the open change
        self._bounds: Rect | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.coverage.shape  # type: ignore[return-value]

    def any(self) -> bool:
        return bool(self.coverage.any())

    def as_bool(self) -> np.ndarray:
        """A new [H, W] bool array, True = repaint; later painting never changes it."""
        return self.coverage >= THRESHOLD

    # ------------------------------------------------------------ painting (inside a change)

    def dab(self, x: float, y: float, radius: float, hardness: float, erase: bool) -> Rect | None:
        """Stamp one round dab centred on image point (x, y); returns the rect it may change."""
        kernel = dab_kernel(round(radius * 4) / 4, round(hardness, 2))
        n = kernel.shape[0] // 2
        cx, cy = int(np.floor(x)), int(np.floor(y))
        height, width = self.shape
        x0, y0 = max(cx - n, 0), max(cy - n, 0)
        x1, y1 = min(cx + n + 1, width), min(cy + n + 1, height)
        if x0 >= x1 or y0 >= y1:
            return None
        rect = (x0, y0, x1 - x0, y1 - y0)
        self._save_tiles(rect)
        window = self.coverage[y0:y1, x0:x1]
        part = kernel[y0 - (cy - n) : y1 - (cy - n), x0 - (cx - n) : x1 - (cx - n)]
        if erase:
            np.minimum(window, FULL - part, out=window)
        else:
            np.maximum(window, part, out=window)
        return rect

    def line(
        self,
        start: tuple[float, float],
        end: tuple[float, float],
        radius: float,
        hardness: float,
        erase: bool,
        carry: float = 0.0,
    ) -> tuple[Rect | None, float]:
        """Dabs every `DAB_SPACING * radius` from `start` (exclusive) to `end`.

        `carry` is the distance already travelled since the last dab; the new carry is returned,
        so a stroke made of many short segments keeps an even spacing. Returns the changed rect.
        """
        spacing = max(DAB_SPACING * radius, min(1.0, radius / 2))  # small brushes: every pixel
        (ax, ay), (bx, by) = start, end
        length = float(np.hypot(bx - ax, by - ay))
        rect = None
        travelled = spacing - carry
        while travelled <= length:
            f = travelled / length
            rect = union(
                rect, self.dab(ax + f * (bx - ax), ay + f * (by - ay), radius, hardness, erase)
            )
            travelled += spacing
        return rect, length - (travelled - spacing)

    def set_region(self, rect: Rect, values: np.ndarray | int, where: np.ndarray | None = None):
        """Write `values` into rect (only where `where` is True, when given)."""
        rect = clip_rect(rect, self.shape)
        if rect is None:
            return None
        x, y, w, h = rect
        self._save_tiles(rect)
        window = self.coverage[y : y + h, x : x + w]
        if where is None:
            window[...] = values
        else:
            window[where] = values
        return rect

    def grow(self, pixels: int) -> Rect | None:
        """Grow the repainted area by `pixels` (a round brush's reach), or shrink it when
        negative. New pixels get full coverage; pixels kept keep their soft values."""
        inside = self.coverage >= THRESHOLD
        box = _bounds(inside)
        if box is None or pixels == 0:
            return None
        r = abs(pixels)
        # only pixels within r of the mask's edge change; the image border never erodes it
        rect = clip_rect((box[0] - r, box[1] - r, box[2] + 2 * r, box[3] + 2 * r), self.shape)
        x, y, w, h = rect
        region = inside[y : y + h, x : x + w]
        if pixels > 0:
            self.set_region(rect, FULL, where=dilate(region, r) & ~region)
        else:
            self.set_region(rect, 0, where=region & ~erode(region, r))
        return rect

    # ------------------------------------------------------------ changes and undo

    def commit(self) -> TileStep | None:
        """Close the open change; its step, or None when no pixel changed."""
        tiles = {}
        for key, before in self._saved.items():
            current = self.coverage[self._tile_slices(key)]
            if current.tobytes() != zlib.decompress(before):
                tiles[key] = (before, _pack(current))
        bounds = self._bounds
        self._saved, self._bounds = {}, None
        if not tiles or bounds is None:
            return None
        return TileStep(tiles, self._tiles_rect(tiles))

    def invert(self) -> InvertStep:
        np.subtract(FULL, self.coverage, out=self.coverage)
        return InvertStep((0, 0, self.shape[1], self.shape[0]))

    def undo(self, step: MaskStep) -> Rect:
        return self._apply(step, 0)

    def redo(self, step: MaskStep) -> Rect:
        return self._apply(step, 1)

    def _apply(self, step: MaskStep, side: int) -> Rect:
        if isinstance(step, InvertStep):
            self.invert()
            return step.bounds
        for key, pair in step.tiles.items():
            view = self.coverage[self._tile_slices(key)]
            view[...] = _unpack(pair[side], view.shape)
        return step.bounds

    def _save_tiles(self, rect: Rect) -> None:
        x, y, w, h = rect
        self._bounds = union(self._bounds, rect)
        for row in range(y // TILE, (y + h - 1) // TILE + 1):
            for col in range(x // TILE, (x + w - 1) // TILE + 1):
                if (row, col) not in self._saved:
                    self._saved[row, col] = _pack(self.coverage[self._tile_slices((row, col))])

    def _tile_slices(self, key: tuple[int, int]) -> tuple[slice, slice]:
        row, col = key
        return slice(row * TILE, (row + 1) * TILE), slice(col * TILE, (col + 1) * TILE)

    def _tiles_rect(self, tiles: dict[tuple[int, int], tuple[bytes, bytes]]) -> Rect:
        rect = None
        height, width = self.shape
        for row, col in tiles:
            x, y = col * TILE, row * TILE
            rect = union(rect, (x, y, min(TILE, width - x), min(TILE, height - y)))
        assert rect is not None
        return rect


# ---------------------------------------------------------------- geometry helpers


def union(a: Rect | None, b: Rect | None) -> Rect | None:
    if a is None:
        return b
    if b is None:
        return a
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    x1, y1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[3], b[1] + b[3])
    return x0, y0, x1 - x0, y1 - y0


def clip_rect(rect: Rect, shape: tuple[int, int]) -> Rect | None:
    x, y, w, h = rect
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, shape[1]), min(y + h, shape[0])
    return (x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


def _bounds(inside: np.ndarray) -> Rect | None:
    """The smallest rect holding every True pixel, or None."""
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def dilate(inside: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within `radius` of a True pixel (a disc), for an [h, w] bool array.

    For each row offset dy the disc is a run of half-width floor(sqrt(r^2 - dy^2)); a run's
    "any" is a difference of row-wise running sums. Cost: 2r + 1 passes over the array.
    """
    h, w = inside.shape
    r = int(radius)
    padded = np.zeros((h + 2 * r, w + 2 * r), bool)
    padded[r : r + h, r : r + w] = inside
    sums = np.zeros((h + 2 * r, w + 2 * r + 1), np.int32)
    np.cumsum(padded, axis=1, out=sums[:, 1:])
    out = np.zeros((h, w), bool)
    runs: dict[int, np.ndarray] = {}
    for dy in range(-r, r + 1):
        half = int(np.sqrt(r * r - dy * dy))
        if half not in runs:  # [h + 2r, w]: any True within `half` along the row
            runs[half] = sums[:, r + half + 1 : r + half + 1 + w] > sums[:, r - half : r - half + w]
        out |= runs[half][r + dy : r + dy + h]
    return out


def erode(inside: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose whole disc of `radius` is True; outside the array counts as True, so the
    image border does not eat into a mask that touches it."""
    return ~dilate(~inside, radius)


def polygon_mask(points: Sequence[tuple[float, float]], rect: Rect) -> np.ndarray:
    """[h, w] bool: which pixel centres of `rect` lie inside the polygon (even-odd rule).

    Scanline fill: each edge toggles the parity from where it crosses a row to the row's end.
    Rows go in bands, so a long lasso over a 24-MP photo needs little temporary memory.
    """
    x, y, w, h = rect
    pts = np.asarray(points, np.float64)
    ax, ay = pts[:, 0], pts[:, 1]
    bx, by = np.roll(ax, -1), np.roll(ay, -1)
    inside = np.empty((h, w), bool)
    band = max(1, (1 << 22) // max(len(pts), w))  # rows per band: a few MB of temporaries
    for top in range(0, h, band):
        rows = np.arange(top, min(top + band, h), dtype=np.float64)[:, None] + y + 0.5
        crosses = (ay <= rows) != (by <= rows)  # [rows, E] the edge spans this row's centre
        row_index, edge_index = np.nonzero(crosses)
        ya, yb = ay[edge_index], by[edge_index]
        xa, xb = ax[edge_index], bx[edge_index]
        at = xa + (rows[row_index, 0] - ya) * (xb - xa) / (yb - ya)  # where each crossing is
        cols = np.clip(np.ceil(at - 0.5 - x).astype(np.int64), 0, w)  # first centre right of it
        toggles = np.zeros((len(rows), w + 1), np.uint8)
        np.add.at(toggles, (row_index, cols), 1)
        parity = np.cumsum(toggles[:, :w], axis=1, dtype=np.uint8) & 1
        inside[top : top + len(rows)] = parity.astype(bool)
    return inside
