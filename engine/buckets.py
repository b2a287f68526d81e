"""The official image sizes: edit crop sizes ("buckets") with the aspect rule that picks one,
and the understanding resize target.

Torch-free (standard library only), so the GUI process can plan a masked edit too: the remote
backend crops and composites locally around a server's edit (app/remote.py), and the chat
counts an image's tokens before sending (app/chat.py).
"""

from __future__ import annotations

import math


def edit_buckets(
    budget: int = 512, step: int = 32, max_ratio: float = 4.0
) -> list[tuple[int, int]]:
    """Official edit crop sizes (w, h): multiples of `step`, area <= budget², aspect <= max_ratio.

    Same enumeration as the official `generate_crop_size_list((budget // step) ** 2, step)`.
    """
    patches = (budget // step) ** 2
    wp, hp = patches, 1
    sizes = []
    while wp > 0:
        if max(wp, hp) / min(wp, hp) <= max_ratio:
            sizes.append((wp * step, hp * step))
        if (hp + 1) * wp <= patches:
            hp += 1
        else:
            wp -= 1
    return sizes


def nearest_bucket(width: float, height: float, buckets: list[tuple[int, int]] | None = None):
    """The bucket whose aspect best matches width:height (official score; ties to the wider)."""

    def score(size: tuple[int, int]) -> tuple[float, tuple[int, int]]:
        rw, rh = size[0] / width, size[1] / height
        return min(rw, rh) / max(rw, rh), size

    return max(buckets or edit_buckets(), key=score)


def understanding_size(height: int, width: int, n_images: int = 1) -> tuple[int, int]:
    """Official smart_resize target (h, w): multiples of 32, 128²..800² pixels (448² if several)."""
    factor, min_pixels = 32, 128 * 128
    max_pixels = (800 if n_images <= 1 else 448) ** 2
    h = max(round(height / factor) * factor, factor)
    w = max(round(width / factor) * factor, factor)
    if h * w > max_pixels:
        s = math.sqrt(max_pixels / (height * width))
        h = max(math.floor(height * s / factor) * factor, factor)
        w = max(math.floor(width * s / factor) * factor, factor)
    elif h * w < min_pixels:
        s = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * s / factor) * factor
        w = math.ceil(width * s / factor) * factor
    return h, w
