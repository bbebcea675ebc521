"""The one container every scorer reads: per-sample (compressed) gradients plus what identifies each row."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Block:
    """A contiguous column range of a gradient matrix that belongs to one parameter group (layer).

    DataInf and the per-layer damping rule (Appendix D.1 of the dropout paper) work block by block.
    """

    name: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        """Number of columns."""
        return self.stop - self.start


@dataclass
class GradientSet:
    """Per-sample gradients of one split: row i is the gradient of sample ``index[i]``.

    ``grads`` may be a numpy array or a read-only memmap; scorers must not write to it.
    """

    grads: np.ndarray
    index: np.ndarray
    labels: np.ndarray
    blocks: list[Block] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.grads.ndim != 2:
            raise ValueError(f"GradientSet.grads must be 2-D [n, d], got shape {self.grads.shape}")
        n = self.grads.shape[0]
        if len(self.index) != n or len(self.labels) != n:
            raise ValueError(
                f"GradientSet rows disagree: grads has {n} rows, index {len(self.index)}, labels {len(self.labels)}"
            )
        if not self.blocks:
            self.blocks = [Block("all", 0, self.grads.shape[1])]
        if self.blocks[-1].stop != self.grads.shape[1]:
            raise ValueError(f"GradientSet blocks end at {self.blocks[-1].stop} but grads has {self.grads.shape[1]} columns")

    @property
    def n(self) -> int:
        """Number of rows (samples)."""
        return self.grads.shape[0]

    @property
    def dim(self) -> int:
        """Number of columns."""
        return self.grads.shape[1]

    def block_views(self) -> list[np.ndarray]:
        """Column slices of ``grads``, one per block (views, no copy)."""
        return [self.grads[:, b.start : b.stop] for b in self.blocks]

    def check_finite(self, what: str = "gradients") -> None:
        """Fail with a clear message when a gradient is NaN or infinite (e.g. a diverged model)."""
        bad = ~np.isfinite(np.asarray(self.grads)).all(axis=1)
        if bad.any():
            rows = self.index[bad][:10].tolist()
            raise FloatingPointError(
                f"{int(bad.sum())} {what} contain NaN/inf (sample indices {rows}...): the model likely diverged; "
                "lower the learning rate or check the data"
            )

    def save(self, path: str) -> None:
        """Write to one ``.npz`` (use attribution.store for sharded, resumable storage)."""
        np.savez(
            path,
            grads=np.asarray(self.grads),
            index=self.index,
            labels=self.labels,
            block_names=np.array([b.name for b in self.blocks]),
            block_bounds=np.array([[b.start, b.stop] for b in self.blocks], dtype=np.int64),
        )

    @classmethod
    def load(cls, path: str) -> "GradientSet":
        """Read a set written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            blocks = [Block(str(n), int(s), int(e)) for n, (s, e) in zip(z["block_names"], z["block_bounds"])]
            return cls(grads=z["grads"], index=z["index"], labels=z["labels"], blocks=blocks)
