"""Augmentation as config: crop after zero / reflect padding, per-image or per-batch offsets, flips, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradsift.data.augment import Augment, Normalize, channel_stats


def _images(b: int = 5, c: int = 2, h: int = 5, w: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _reference(x: torch.Tensor, oy, ox, flip, padding: int, mode: str) -> torch.Tensor:
    """Pad each image with torch's own padding, slice the crop, flip it: one image at a time, in float."""
    h, w = x.shape[-2:]
    out = []
    for b in range(len(x)):
        img = x[b:b + 1].float()
        padded = F.pad(img, (padding,) * 4, mode="constant" if mode == "zeros" else "reflect")[0]
        crop = padded[:, int(oy[b]):int(oy[b]) + h, int(ox[b]):int(ox[b]) + w]
        out.append(crop.flip(-1) if flip[b] else crop)
    return torch.stack(out)


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
@pytest.mark.parametrize("crop", ["per_sample", "per_batch"])
def test_crop_and_flip_match_padded_reference(mode, crop):
    x = _images()
    aug = Augment(padding=2, pad_mode=mode, crop=crop, flip=True)
    oy, ox, flip = aug.draw(len(x), torch.Generator().manual_seed(3))
    if crop == "per_batch":
        assert len(set(oy.tolist())) == 1 and len(set(ox.tolist())) == 1
    out = aug.apply(x, oy, ox, flip)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    torch.testing.assert_close(out.float(), _reference(x, oy, ox, flip, 2, mode), rtol=0, atol=0)


def test_every_offset_and_flip_against_the_reference():
    """All 25 offsets x both flips, so that corners of zero and reflect padding are all hit."""
    x = _images(b=50, h=4, w=4)
    grid = torch.arange(25)
    oy, ox = (grid // 5).repeat(2), (grid % 5).repeat(2)
    flip = torch.cat([torch.zeros(25, dtype=torch.long), torch.ones(25, dtype=torch.long)])
    for mode in ("zeros", "reflect"):
        aug = Augment(padding=2, pad_mode=mode)
        torch.testing.assert_close(aug.apply(x, oy, ox, flip).float(), _reference(x, oy, ox, flip, 2, mode),
                                   rtol=0, atol=0)


def test_reflect_differs_from_zeros_only_in_the_border():
    x = _images(b=1, h=6, w=6) + 1  # no zero pixels
    oy = ox = torch.zeros(1, dtype=torch.long)  # top-left crop: two border rows and columns
    flip = torch.zeros(1, dtype=torch.long)
    z = Augment(padding=2).apply(x, oy, ox, flip)
    r = Augment(padding=2, pad_mode="reflect").apply(x, oy, ox, flip)
    assert (z[..., :2, :] == 0).all() and (z[..., :, :2] == 0).all() and (r > 0).all()
    torch.testing.assert_close(z[..., 2:, 2:], r[..., 2:, 2:])
    torch.testing.assert_close(r[0, :, 0, 2:], x[0, :, 2, :4])  # row -2 mirrors row 2


def test_default_draws_are_the_old_per_image_stream():
    """Defaults draw what the CIFAR-N training code drew: b row offsets, b column offsets, b flip uniforms."""
    gen = torch.Generator().manual_seed(5)
    oy, ox, flip = Augment().draw(7, gen)
    ref = torch.Generator().manual_seed(5)
    torch.testing.assert_close(oy, torch.randint(0, 9, (7,), generator=ref))
    torch.testing.assert_close(ox, torch.randint(0, 9, (7,), generator=ref))
    torch.testing.assert_close(flip, (torch.rand(7, generator=ref) < 0.5).long())


def test_no_flip_and_no_padding_leave_images_alone():
    x = _images()
    aug = Augment(padding=0, flip=False)
    oy, ox, flip = aug.draw(len(x), torch.Generator().manual_seed(0))
    assert not flip.any() and not oy.any() and not ox.any()
    torch.testing.assert_close(aug.apply(x, oy, ox, flip), x)


def test_config_values_and_errors_name_the_key():
    assert Augment.from_config(True) == Augment() and Augment.from_config(False) is None
    assert Augment.from_config(None) is None
    assert Augment.from_config({"pad_mode": "reflect", "crop": "per_batch"}) == Augment(pad_mode="reflect",
                                                                                        crop="per_batch")
    with pytest.raises(ValueError, match="data.augment.pad_mode"):
        Augment(pad_mode="edge")
    with pytest.raises(ValueError, match="data.augment.crop"):
        Augment(crop="per_epoch")
    with pytest.raises(ValueError, match="data.augment has unknown keys"):
        Augment.from_config({"padd": 4})
    with pytest.raises(ValueError, match="data.augment="):
        Augment.from_config("yes")


def test_normalize_and_dataset_statistics():
    x = _images(b=40, c=3, h=4, w=4)
    mean, std = channel_stats(x, chunk=7)
    ref = x.double().permute(1, 0, 2, 3).reshape(3, -1) / 255
    np.testing.assert_allclose(mean, ref.mean(1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(1, unbiased=False).numpy(), rtol=1e-10)
    norm = Normalize(mean, std)(x)
    np.testing.assert_allclose(norm.double().mean((0, 2, 3)).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(norm.double().std((0, 2, 3), unbiased=False).numpy(), 1, atol=1e-5)
    with pytest.raises(ValueError, match="data.normalize"):
        Normalize((0.5, 0.5), (0.2, 0.0))
