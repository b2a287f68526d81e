"""The live picture of image tokens as they commit during denoising: a colour per VQ code.

Each code's colour is the first three principal components of its row in the decoder's SigVQ
embedding table (`image_tokenizer/sigvq_embedding.pt`), scaled to 0..255, computed once per model.
It is false colour, but codes the decoder reads alike look alike, so the picture shows the layout
forming as tokens commit. Tokens still masked are grey. A step costs one table lookup.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.errors import BadCheckpoint

SIGVQ_FILE = "image_tokenizer/sigvq_embedding.pt"
TABLE_KEY = "prior_token_embedding.weight"
MASKED = np.array([72, 72, 72], dtype=np.uint8)  # a token not committed yet
PREVIEW_SIDE = 128  # the picture's long side in pixels, at most (whole tokens, nearest)


class TokenPalette:
    """A colour per VQ code; `paint` turns a grid of codes (−1 = masked) into a small picture."""

    def __init__(self, colours: np.ndarray):
        self.colours = np.concatenate([colours.astype(np.uint8), MASKED[None]])  # [V+1, 3]

    @classmethod
    def from_table(cls, table: torch.Tensor) -> TokenPalette:
        """table [V, S] -> the palette of its first three principal components."""
        x = table.float()
        x = x - x.mean(0)
        with torch.random.fork_rng(devices=[]):  # pca_lowrank draws; keep the palette fixed
            torch.manual_seed(0)
            _, _, v = torch.pca_lowrank(x, q=3, center=False, niter=4)
        pcs = x @ v  # [V, 3]
        peak = pcs[pcs.abs().argmax(0), torch.arange(3)]  # each component's largest entry
        pcs = pcs * torch.sign(peak)  # a component's sign is arbitrary: fix it
        lo, hi = torch.quantile(pcs, 0.01, dim=0), torch.quantile(pcs, 0.99, dim=0)
        scaled = ((pcs - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1) * 255
        return cls(scaled.round().to(torch.uint8).numpy())

    @classmethod
    def from_model(cls, root: Path) -> TokenPalette:
        path = Path(root) / SIGVQ_FILE
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # missing, pickle and zip errors all mean no usable table
            raise BadCheckpoint(f"The SigVQ weights {path} cannot be read.") from error
        table = state.get(TABLE_KEY) if isinstance(state, dict) else None
        if table is None or table.ndim != 2:
            raise BadCheckpoint(f"{path} is not a SigVQ state dict.")
        return cls.from_table(table)

    def paint(self, codes: np.ndarray) -> np.ndarray:
        """codes [h, w] int (−1 or out of range = masked) -> [h*s, w*s, 3] uint8, s whole."""
        size = len(self.colours) - 1
        index = np.where((codes >= 0) & (codes < size), codes, size)
        picture = self.colours[index]  # [h, w, 3]
        scale = max(1, PREVIEW_SIDE // max(codes.shape))
        return picture.repeat(scale, axis=0).repeat(scale, axis=1)
