"""Image-batch augmentation and normalisation as config (``data.augment``, ``data.normalize``), on any device.

:class:`Augment` is a random crop after padding plus a random horizontal flip, the CIFAR training augmentation:
``padding`` pixels of ``pad_mode`` padding (``zeros``: black border, the CIFAR-N authors' code; ``reflect``: the
image mirrored at its edge, without repeating the edge pixel, as ``torch.nn.functional.pad(mode="reflect")``), one
crop offset per image (``per_sample``) or one for the whole batch (``per_batch``), and a flip with probability 1/2
per image. The random numbers are drawn on the host from a seeded ``torch.Generator`` (:meth:`Augment.draw`);
:meth:`Augment.apply` crops and flips a uint8 [B, C, H, W] batch by indexing wherever the batch lives, so a batch on
the GPU never waits for the host. :class:`Normalize` maps uint8 pixels to ``(x / 255 - mean) / std`` per channel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch

PAD_MODES = ("zeros", "reflect")
CROPS = ("per_sample", "per_batch")


@dataclass(frozen=True)
class Augment:
    """Random crop after ``padding`` pixels of ``pad_mode`` padding (one offset per image or per batch) + random flip."""

    padding: int = 4
    pad_mode: str = "zeros"
    crop: str = "per_sample"
    flip: bool = True

    def __post_init__(self) -> None:
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"data.augment.pad_mode={self.pad_mode!r}; expected one of {PAD_MODES}")
        if self.crop not in CROPS:
            raise ValueError(f"data.augment.crop={self.crop!r}; expected one of {CROPS}")
        if not isinstance(self.padding, int) or self.padding < 0:
            raise ValueError(f"data.augment.padding={self.padding!r}; expected an integer >= 0")

    @classmethod
    def from_config(cls, value: bool | Mapping | None) -> "Augment | None":
        """``data.augment``: true (the defaults above), false / null (no augmentation) or a mapping of the fields."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if not isinstance(value, Mapping):
            raise ValueError(f"data.augment={value!r}; expected true, false or a mapping with keys "
                             f"{[f.name for f in fields(cls)]}")
        unknown = set(value) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"data.augment has unknown keys {sorted(unknown)}; expected {[f.name for f in fields(cls)]}")
        return cls(**dict(value))

    def draw(self, b: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Host int64 row offsets, column offsets (in ``[0, 2 * padding]``) and flips (0/1) for a batch of ``b``.

        Drawn in this order from ``generator``: offsets (``b`` each, or 1 each ``per_batch``), then ``b`` uniforms for
        the flips; with the defaults this is the stream of the CIFAR-N training code's per-image crop and flip.
        """
        span = 2 * self.padding + 1
        if self.padding == 0:
            oy = ox = torch.zeros(b, dtype=torch.long)
        else:
            k = b if self.crop == "per_sample" else 1
            oy = torch.randint(0, span, (k,), generator=generator).expand(b)
            ox = torch.randint(0, span, (k,), generator=generator).expand(b)
        flip = (torch.rand(b, generator=generator) < 0.5).long() if self.flip else torch.zeros(b, dtype=torch.long)
        return oy, ox, flip

    def apply(self, x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """Crop and flip the [B, C, H, W] batch ``x`` by the offsets and flips of :meth:`draw` (on ``x``'s device).

        Output pixel (i, j) of image b is pixel (oy_b + i - padding, ox_b + j' - padding) of the input, with
        j' = W - 1 - j for flipped images, read through the padding. The result has channels-last strides.
        """
        b, _, h, w = x.shape
        rows = oy[:, None] + torch.arange(h, device=x.device) - self.padding  # [B, H] source rows, may be outside
        cols = ox[:, None] + torch.arange(w, device=x.device) - self.padding
        cols = torch.where(flip.bool()[:, None], cols.flip(-1), cols)
        if self.pad_mode == "reflect":
            rows, cols = _reflect(rows, h), _reflect(cols, w)
            valid = None
        else:
            valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
            rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
        out = x[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
        if valid is not None:
            out = torch.where(valid[..., None], out, torch.zeros((), dtype=out.dtype, device=out.device))
        return out.permute(0, 3, 1, 2)


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Indices outside ``[0, n)`` mirrored at the edge without repeating it (-1 -> 1, n -> n - 2)."""
    i = torch.where(i < 0, -i, i)
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


class Normalize:
    """uint8 pixels -> ``(x - 255 mean) / (255 std)`` in float32, per channel (``mean``/``std`` in [0, 1] units)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"data.normalize: mean {list(mean)} and std {list(std)} need one value per channel, "
                             "std > 0")
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self._scaled = {torch.device("cpu"): (torch.tensor(self.mean).view(1, -1, 1, 1) * 255,
                                              torch.tensor(self.std).view(1, -1, 1, 1) * 255)}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # one copy per device, made once: a copy per batch would be a host round trip per batch
        if device not in self._scaled:
            mean, std = self._scaled[torch.device("cpu")]
            self._scaled[device] = (mean.to(device), std.to(device))
        return self._scaled[device]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float32 copy of ``x`` [B, C, H, W] (uint8 pixels)."""
        mean, std = self._on(x.device)
        return (x.float() - mean) / std


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of uint8 images [N, C, H, W], in [0, 1] units."""
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    squares = torch.zeros_like(total)
    for s in range(0, len(x), chunk):
        part = x[s:s + chunk].to(torch.float64)
        total += part.sum(dim=(0, 2, 3))
        squares += (part * part).sum(dim=(0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    std = (squares / n - mean * mean).clamp_min(0).sqrt()
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())
