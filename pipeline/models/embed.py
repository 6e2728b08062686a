"""embed_lr: logistic regression on frozen sentence embeddings (see encoder.py).

The design is [u * v, |u - v|, cos(u, v)] for pairs (u, v the two sides' embeddings;
order-invariant), u alone for single texts.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import Split
from .classical import Classical
from .encoder import pair_cosine, split_embeddings
from .params import EmbedLRParams


class EmbedLR(Classical):
    params: EmbedLRParams

    def _design(self, split: Split, fit: bool) -> np.ndarray:
        """(n, 2H + 1) for pairs, (n, H) for single texts."""
        p = self.params
        a, b = split_embeddings(self.cache_, p.backbone, split, self.view, p.max_length, p.batch_size)
        if b is None:
            return a
        return np.hstack([a * b, np.abs(a - b), pair_cosine(a, b)])

    kind = "embed_lr"

    def _files(self, directory: Path) -> list[Path]:
        """lr_coef.npy, lr_intercept.npy: the encoder is the pretrained backbone, loaded by name."""
        return self._save_lr(directory)
