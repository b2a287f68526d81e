"""What the canvas draws from, kept between repaints: a version's pixels as QImages at a few
sizes (ImagePyramid) and the mask as coloured tiles at a few sizes (MaskOverlay).

Both follow one rule: draw from the smallest copy that still has a pixel per screen pixel, so a
6000x4000 photo at fit draws from a copy a quarter of its width, never the full image. The overlay's
smaller copies take each block's highest coverage, so a thin stroke stays visible when zoomed out.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage

TILE = 256  # overlay tile side, in overlay pixels
MAX_STEP = 32  # the overlay's coarsest copy: one pixel per 32x32 mask pixels
PREMULTIPLIED = QImage.Format.Format_ARGB32_Premultiplied

Box = tuple[int, int, int, int]  # x0, y0, x1, y1


def to_qimage(image: np.ndarray) -> QImage:
    """A deep copy of an [H, W, 3] uint8 array as an RGB32 QImage (the fastest format to draw)."""
    rgb = np.ascontiguousarray(image)
    height, width = rgb.shape[:2]
    wrapped = QImage(rgb.data, width, height, rgb.strides[0], QImage.Format.Format_RGB888)
    return wrapped.convertToFormat(QImage.Format.Format_RGB32)


class ImagePyramid:
    """A version's pixels at full size and halved until small, converted once per version."""

    def __init__(self, image: np.ndarray):
        self.source = image
        level = to_qimage(image)
        self.width, self.height = level.width(), level.height()
        self.levels = [level]
        while min(level.width(), level.height()) > 128 and len(self.levels) < 7:
            level = level.scaled(
                max(level.width() // 2, 1),
                max(level.height() // 2, 1),
                Qt.AspectRatioMode.IgnoreAspectRatio,
                Qt.TransformationMode.SmoothTransformation,
            )
            self.levels.append(level)

    def pick(self, zoom: float) -> QImage:
        """The smallest level that still has at least one pixel per screen pixel at `zoom`."""
        chosen = self.levels[0]
        for level in self.levels[1:]:
            if level.width() / self.width < zoom:
                break
            chosen = level
        return chosen


def pooled(coverage: np.ndarray, step: int, box: Box) -> np.ndarray:
    """The highest coverage of each step x step block in the overlay-pixel box of `coverage`."""
    x0, y0, x1, y1 = box
    block = coverage[y0 * step : y1 * step, x0 * step : x1 * step]
    if step == 1:
        return block
    h, w = y1 - y0, x1 - x0
    short = (h * step - block.shape[0], w * step - block.shape[1])
    if any(short):  # the image's last row or column of blocks is partial
        block = np.pad(block, ((0, short[0]), (0, short[1])))
    return block.reshape(h, step, w, step).max(axis=(1, 3))


class MaskOverlay:
    """The mask as premultiplied ARGB tiles, per size step (1, 2, 4, ... mask pixels per pixel).

    Tiles are made when first drawn. Afterwards `mark` records the part of each known tile that a
    change touched, and the next draw of that tile recolours just that part. A tile known to be
    empty is kept as None, so an empty mask draws nothing.
    """

    def __init__(self, shape: tuple[int, int], rgb: tuple[int, int, int], opacity: float):
        self.shape = shape
        self.lut = np.zeros(256, np.uint32)
        self.tiles: dict[int, dict[tuple[int, int], tuple[np.ndarray, QImage] | None]] = {}
        self.dirty: dict[int, dict[tuple[int, int], Box]] = {}
        self.set_colour(rgb, opacity)

    @staticmethod
    def step_for(zoom: float) -> int:
        """The coarsest step that still gives at least one overlay pixel per screen pixel."""
        step = 1
        while step < MAX_STEP and zoom * step * 2 <= 1:
            step *= 2
        return step

    def set_colour(self, rgb: tuple[int, int, int], opacity: float) -> None:
        """Coverage c shows as the colour at opacity * c / 255; every tile is recoloured."""
        alpha = np.arange(256, dtype=np.float64) * opacity
        r, g, b = (np.rint(alpha * c / 255).astype(np.uint32) for c in rgb)
        self.lut = (np.rint(alpha).astype(np.uint32) << 24) | (r << 16) | (g << 8) | b
        self.tiles.clear()
        self.dirty.clear()

    def mark(self, x: int, y: int, w: int, h: int) -> None:
        """The mask changed in this image rect."""
        for step, tiles in self.tiles.items():
            dirty = self.dirty.setdefault(step, {})
            lx0, ly0 = x // step, y // step
            lx1, ly1 = -(-(x + w) // step), -(-(y + h) // step)
            for row in range(ly0 // TILE, (ly1 - 1) // TILE + 1):
                for col in range(lx0 // TILE, (lx1 - 1) // TILE + 1):
                    if (row, col) not in tiles:
                        continue  # never made: it will be made from the mask as it is then
                    tx, ty = col * TILE, row * TILE
                    box = (max(lx0, tx), max(ly0, ty), min(lx1, tx + TILE), min(ly1, ty + TILE))
                    old = dirty.get((row, col))
                    if old is not None:
                        box = (
                            min(old[0], box[0]), min(old[1], box[1]),
                            max(old[2], box[2]), max(old[3], box[3]),
                        )  # fmt: skip
                    dirty[row, col] = box

    def tile(self, step: int, key: tuple[int, int], coverage: np.ndarray) -> QImage | None:
        """The tile's image at `step`, up to date with `coverage`; None where it is empty."""
        tiles = self.tiles.setdefault(step, {})
        box = self.dirty.get(step, {}).pop(key, None)
        if key not in tiles:
            tiles[key] = self._make(step, key, coverage)
        elif box is not None:
            entry = tiles[key]
            if entry is None:
                tiles[key] = self._make(step, key, coverage)
            else:
                row, col = key
                x0, y0, x1, y1 = box
                inner = (
                    slice(y0 - row * TILE, y1 - row * TILE),
                    slice(x0 - col * TILE, x1 - col * TILE),
                )
                entry[0][inner] = self.lut[pooled(coverage, step, box)]
        entry = tiles[key]
        return None if entry is None else entry[1]

    def _make(self, step: int, key: tuple[int, int], coverage: np.ndarray):
        height, width = -(-self.shape[0] // step), -(-self.shape[1] // step)
        row, col = key
        box = (col * TILE, row * TILE, min((col + 1) * TILE, width), min((row + 1) * TILE, height))
        values = pooled(coverage, step, box)
        if not values.any():
            return None
        pixels = np.ascontiguousarray(self.lut[values])
        image = QImage(
            pixels.data, pixels.shape[1], pixels.shape[0], pixels.strides[0], PREMULTIPLIED
        )
        return pixels, image  # the QImage shares the array's memory, so both are kept
