"""PCA-whitening of region descriptors (numpy only: the library applies it without torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def l2n_np(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length (numpy; describe.l2n takes tensors too)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


@dataclass
class Whitening:
    """PCA-whitening learned on L2-normalised region descriptors."""

    mean: np.ndarray  # (D,)
    proj: np.ndarray  # (d, D): rows are eigenvectors / sqrt(eigenvalue)
    version: int = 1
    fitted_on: int = 0

    @classmethod
    def fit(cls, x: np.ndarray, dims: int = 0, shrink: float = 1e-3, version: int = 1) -> "Whitening":
        """Fit on (N, D) L2-normalised vectors; `shrink` (relative to the mean eigenvalue)
        keeps the smallest directions from exploding when N is not much larger than D."""
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(0)
        xc = x - mean
        cov = xc.T @ xc / max(1, x.shape[0] - 1)
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(evals)[::-1]
        evals, evecs = evals[order], evecs[:, order]
        # N vectors span at most N-1 directions: the rest have no variance to whiten.
        rank = int((evals > 1e-9 * max(evals[0], 1e-12)).sum())
        keep = min(rank, max(1, x.shape[0] - 1), dims or len(evals))
        evals, evecs = evals[:keep], evecs[:, :keep]
        evals = evals.clip(min=0) + shrink * max(evals.mean(), 1e-12)
        proj = (evecs / np.sqrt(evals)).T
        return cls(mean.astype(np.float32), proj.astype(np.float32), version, int(x.shape[0]))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, D) L2-normalised -> (N, d) whitened and L2-normalised, float32."""
        y = (np.asarray(x, dtype=np.float32) - self.mean) @ self.proj.T
        return l2n_np(y).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "proj": self.proj, "version": np.array(self.version),
                "fitted_on": np.array(self.fitted_on)}

    @classmethod
    def from_arrays(cls, a) -> "Whitening":
        return cls(a["mean"], a["proj"], int(a["version"]), int(a["fitted_on"]))
