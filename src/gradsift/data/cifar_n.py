"""CIFAR-10N / CIFAR-100N: CIFAR images with real human noisy labels (Wei et al., 2022; OGA paper Section 5, B.1.2).

Images come from one of three sources under ``data_dir``:

* ``torchvision``: the standard folders ``cifar-10-batches-py`` / ``cifar-100-python`` (downloaded by torchvision
  when it is installed and ``download=True``). The pickled batches are parsed by a restricted unpickler that only
  rebuilds numpy arrays, so a tampered file cannot run code.
* ``jpeg``: ``cifar10-jpeg/cifar10_jpeg.npz``, all 60,000 CIFAR-10 images as JPEG q75 (lossy: report results as
  "CIFAR-10 (JPEG q75)"), decoded once with PIL and cached as uint8 ``.npy``.
* ``partial``: ``cifar10-partial/cifar10_partial.npz``, the exact pixels of 5,085 train / 1,017 test images; used by
  the dataset ``cifar10n_5k``.

Human labels are the official CIFAR-N files (``CIFAR-10_human.pt`` / ``CIFAR-100_human.pt``, read with
``torch.load(weights_only=True)`` and only numpy arrays allowed) or their ``.npz`` copies, looked up in
``data_dir`` and ``data_dir/cifar-n``, downloaded from the authors' GitHub when missing and ``download=True``.
Their ``clean_label`` must equal the CIFAR train labels in order; loading fails loudly otherwise.

Images stay uint8 [N, 3, 32, 32] tensors; batches are gathered by tensor indexing (``__getitems__``), normalized
on the fly (``normalize``: the CIFAR-N authors' constants, the training split's own statistics, or given values),
and augmented only in the training loader (``augment``, :class:`gradsift.data.augment.Augment`; by default a
random crop with 4-pixel zero padding + horizontal flip per image, as the CIFAR-N authors' code). With
``device="cuda"`` the whole split lives on the GPU (use ``num_workers=0``) and the training loader is a
:class:`gradsift.data.resident.ResidentBatches`, which makes the same batches there without waiting for the host.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from gradsift.data.augment import Augment, Normalize, channel_stats
from gradsift.data.base import DictDataset, MissingInputError, NoisyLabelDataModule
from gradsift.data.resident import ResidentBatches

# per-channel statistics used by the CIFAR-N authors' training code
MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276)),
}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# noise option -> key in the official label file
NOISE_KEYS = {
    "cifar10n": {"aggregate": "aggre_label", "random1": "random_label1", "random2": "random_label2",
                 "random3": "random_label3", "worst": "worse_label", "clean": "clean_label"},
    "cifar100n": {"noisy": "noisy_label", "clean": "clean_label"},
}
LABEL_FILES = {"cifar10": ("CIFAR-10_human.pt", "cifar10n_labels.npz"),
               "cifar100": ("CIFAR-100_human.pt", "cifar100n_labels.npz")}
LABEL_URL = "https://github.com/UCSC-REAL/cifar-10-100n/raw/main/data/{}"
TORCHVISION_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
JPEG_ARCHIVE = Path("cifar10-jpeg") / "cifar10_jpeg.npz"
PARTIAL_ARCHIVE = Path("cifar10-partial") / "cifar10_partial.npz"


# -- safe readers ---------------------------------------------------------------------------------------------
def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes at protocol 2; only latin-1 is accepted."""
    if encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_reconstruct():
    core = getattr(np, "_core", None) or np.core
    return core.multiarray._reconstruct


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays (and plain containers); any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
            ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): _latin1_encode,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: CIFAR batches hold only arrays")
        return allowed[(module, name)]


def read_cifar_batch(path: str | Path) -> dict[str, Any]:
    """One pickled CIFAR batch file (``data_batch_1``, ``test``, ...) as a dict with str keys, safely."""
    with open(path, "rb") as f:
        raw = _ArrayUnpickler(f, encoding="latin1").load()
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a pickled dict (CIFAR batch format), got {type(raw).__name__}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


def read_torchvision_cifar(root: str | Path, base: str) -> dict[str, np.ndarray]:
    """``x_train`` [N,32,32,3] uint8, ``y_train``, ``x_test``, ``y_test`` (fine labels) from a torchvision folder."""
    root = Path(root) / TORCHVISION_DIRS[base]
    if base == "cifar10":
        files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        label_key = "labels"
    else:
        files = {"train": ["train"], "test": ["test"]}
        label_key = "fine_labels"
    out = {}
    for split, names in files.items():
        xs, ys = [], []
        for name in names:
            if not (root / name).is_file():
                raise FileNotFoundError(f"CIFAR batch file {root / name} is missing (expected the torchvision layout)")
            batch = read_cifar_batch(root / name)
            xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(batch[label_key], dtype=np.int64))
        out[f"x_{split}"], out[f"y_{split}"] = np.concatenate(xs), np.concatenate(ys)
    meta = root / ("batches.meta" if base == "cifar10" else "meta")
    if meta.is_file():
        names = read_cifar_batch(meta).get("label_names" if base == "cifar10" else "fine_label_names")
        if names is not None:
            out["class_names"] = np.asarray([n.decode() if isinstance(n, bytes) else n for n in names])
    return out


def _decode_jpegs(buf: np.ndarray, offsets: np.ndarray, rows: Sequence[int] | None = None) -> np.ndarray:
    from PIL import Image

    rows = range(len(offsets) - 1) if rows is None else rows
    out = np.empty((len(rows), 32, 32, 3), dtype=np.uint8)
    for j, i in enumerate(rows):
        img = Image.open(io.BytesIO(buf[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB")
        out[j] = np.asarray(img)
    return out


def read_jpeg_archive(path: str | Path, cache_dir: str | Path | None = None,
                      rows: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """CIFAR-10 from the JPEG q75 archive: decoded once, cached as uint8 ``.npy`` in ``cache_dir``.

    ``rows`` decodes only those training images (no cache; for tests); the test split is then left out.
    """
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        if rows is not None:
            return {"x_train": _decode_jpegs(z["train_jpeg"], z["train_offsets"], rows),
                    "y_train": z["y_train"][np.asarray(rows)]}
        out = {"y_train": z["y_train"], "y_test": z["y_test"]}
        cache = Path(cache_dir) if cache_dir else path.parent
        stat = path.stat()
        for split in ("train", "test"):
            npy = cache / f"{path.stem}_{split}_{stat.st_size}.npy"
            if not npy.is_file():
                x = _decode_jpegs(z[f"{split}_jpeg"], z[f"{split}_offsets"])
                npy.parent.mkdir(parents=True, exist_ok=True)
                tmp = npy.with_suffix(f".tmp{os.getpid()}.npy")
                np.save(tmp, x)
                os.replace(tmp, npy)
            out[f"x_{split}"] = np.load(npy, allow_pickle=False)
    return out


def read_human_labels(data_dir: str | Path, base: str, download: bool = False) -> dict[str, np.ndarray]:
    """The official CIFAR-N label arrays (``clean_label``, ``aggre_label``, ...), without arbitrary unpickling."""
    data_dir = Path(data_dir)
    pt_name, npz_name = LABEL_FILES[base]
    for folder in (data_dir, data_dir / "cifar-n"):
        if (folder / pt_name).is_file():
            return _load_label_pt(folder / pt_name)
        if (folder / npz_name).is_file():
            with np.load(folder / npz_name, allow_pickle=False) as z:
                return {k: z[k].astype(np.int64) for k in z.files}
    if not download:
        raise FileNotFoundError(f"CIFAR-N labels not found: looked for {pt_name} / {npz_name} in {data_dir} and "
                                f"{data_dir / 'cifar-n'} (set download=true to fetch them from the authors' GitHub)")
    target = data_dir / "cifar-n" / pt_name
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(LABEL_URL.format(pt_name), str(target))
    return _load_label_pt(target)


def _load_label_pt(path: Path) -> dict[str, np.ndarray]:
    # files written under numpy 1 name numpy.core, under numpy 2 numpy._core; both are the same function
    safe = [_numpy_reconstruct(), (_numpy_reconstruct(), "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
            type(np.dtype(np.int64))]
    with torch.serialization.safe_globals(safe):
        raw = torch.load(path, weights_only=True, map_location="cpu")
    if not isinstance(raw, dict) or "clean_label" not in raw:
        raise ValueError(f"{path}: expected a dict of label arrays with 'clean_label' (the CIFAR-N format)")
    return {k: np.asarray(v, dtype=np.int64) for k, v in raw.items()}


def check_alignment(clean: np.ndarray, cifar_labels: np.ndarray, what: str) -> None:
    """Fail loudly unless the CIFAR-N clean labels equal the CIFAR train labels in the same order."""
    if clean.shape != cifar_labels.shape or not np.array_equal(clean, cifar_labels):
        bad = (np.flatnonzero(clean != cifar_labels) if clean.shape == cifar_labels.shape else [])
        raise ValueError(f"CIFAR-N clean_label does not match the CIFAR train labels of {what} "
                         f"(shapes {clean.shape} vs {cifar_labels.shape}; {len(bad)} mismatches, "
                         f"e.g. at {list(bad[:5])}): "
                         "the images and the label file are not in the same order")


def balanced_choice(labels: np.ndarray, count: int, rng: np.random.Generator, pool: np.ndarray | None = None
                    ) -> np.ndarray:
    """``count`` positions from ``pool`` (default all), as equal per class as possible, sorted."""
    pool = np.arange(len(labels)) if pool is None else pool
    classes = np.unique(labels[pool])
    if count > len(pool):
        raise ValueError(f"cannot pick {count} samples from {len(pool)}")
    per = np.full(len(classes), count // len(classes))
    per[rng.permutation(len(classes))[: count % len(classes)]] += 1
    chosen = []
    for c, k in zip(classes, per):
        members = pool[labels[pool] == c]
        if k > len(members):
            raise ValueError(f"class-balanced subset of {count} needs {k} samples of class {c}, it has {len(members)}")
        chosen.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(chosen))


# -- dataset + batches ------------------------------------------------------------------------------------------
class ImageDataset(DictDataset):
    """A ``DictDataset`` of uint8 image tensors whose batches are gathered in one indexing op (``__getitems__``)."""

    def __getitems__(self, rows: list[int]) -> dict:
        idx = torch.as_tensor(rows, dtype=torch.long)
        # non-blocking host -> device copies: a blocking one waits for every queued kernel, once per batch
        on = {d: idx.to(d, non_blocking=True) for d in {v.device for v in self.columns.values()}}
        batch = {k: v[on[v.device]] for k, v in self.columns.items()}
        batch["index"] = torch.as_tensor(self.index[idx.numpy()]).to(batch["x"].device, non_blocking=True)
        return batch

    def subset(self, rows: Sequence[int]) -> "ImageDataset":
        """The rows ``rows`` (positions) as a new dataset, keeping their sample indices."""
        rows = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        return ImageDataset({k: v[rows.to(v.device)] for k, v in self.columns.items()},
                            index=self.index[rows.numpy()])


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Per-image random crop after zero padding, then random horizontal flip, on a [B, C, H, W] batch."""
    return _augment(Augment(padding=padding), x, generator)


def _augment(augment: Augment, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    oy, ox, flip = (t.to(x.device, non_blocking=True) for t in augment.draw(len(x), generator))
    return augment.apply(x, oy, ox, flip)


class _Collate:
    """uint8 batch -> normalized float batch; augmented when ``augment`` and its ``generator`` are given (training)."""

    def __init__(self, normalize: Normalize, augment: Augment | None = None, generator: torch.Generator | None = None):
        self.normalize, self.augment, self.generator = normalize, augment, generator

    def __call__(self, batch: dict | list[dict]) -> dict:
        if isinstance(batch, list):  # a plain sampler gave single items
            batch = torch.utils.data.default_collate(batch)
        x = batch["x"]
        if self.augment is not None:
            x = _augment(self.augment, x, self.generator)
        return {**batch, "x": self.normalize(x).contiguous()}


# -- datamodule -------------------------------------------------------------------------------------------------
class CIFARNDataModule(NoisyLabelDataModule):
    """CIFAR-10N / CIFAR-100N / the exact 5,085-image CIFAR-10N subset, with items x, label, clean_label, index.

    ``dataset``: ``cifar10n`` | ``cifar100n`` | ``cifar10n_5k``. ``noise``: ``aggregate``, ``random1``..``random3``,
    ``worst``, ``clean`` (CIFAR-10N) or ``noisy``, ``clean`` (CIFAR-100N; ``coarse=True`` uses the 20 superclasses).
    ``source``: ``auto`` | ``torchvision`` | ``jpeg`` (CIFAR-10 only). ``val_size`` carves a seeded, class-balanced
    held-out split from train (with clean labels: it stands for the trusted set influence methods need);
    ``subset`` then keeps a seeded class-balanced count of the rest; ``test_size`` keeps a seeded class-balanced
    part of the clean test split (the dropout paper's 256). ``index`` is the image's position in the official
    CIFAR order, so it stays stable across subsets.

    ``augment``: the training augmentation, ``true`` (the CIFAR-N authors' crop + flip), ``false``, or a mapping of
    :class:`gradsift.data.augment.Augment` fields (``padding``, ``pad_mode``, ``crop``, ``flip``). ``normalize``:
    ``cifar_n`` (the CIFAR-N authors' per-channel constants), ``dataset`` (the training split's own per-channel
    mean / std, computed once before any ``keep``) or ``{mean: [...], std: [...]}`` in [0, 1] units.
    ``shuffle``: reshuffle the training split every epoch (false keeps the dataset order); or a mapping
    ``{base: bool, retrain: bool}``: ``base`` for the model trained on the full training split, ``retrain`` for every
    fit on a kept subset (:meth:`with_keep`: the retrains, and the folds of ``scorer.probs=kfold``). The OGA
    authors' ``cifar-10-100n/OD-experiment.py`` trains the base model with ``shuffle=False`` ("True originally") and
    retrains through a random sampler over the kept indices (``RemovalSampler``): ``{base: false, retrain: true}``.
    ``attribution_augment``: the training split's attribution loader (per-sample gradients, the label-quality
    scorers' probabilities) applies the training augmentation too, one seeded draw per image (the same draws on every
    call): the OGA authors gather gradients (``temp_dl``, ``OD-experiment.py``) and probabilities
    (``get_probs_preds(train_loader)``, ``baseline-experiment-label.py``) from ``train_dataset``, whose transform is
    the training one. False (default): un-augmented images.
    """

    def __init__(self, dataset: str = "cifar10n", noise: str = "aggregate", data_dir: str = "data",
                 source: str = "auto", download: bool = True, cache_dir: str | None = None, coarse: bool = False,
                 subset: int | None = None, val_size: int = 0, test_size: int | None = None,
                 augment: bool | Mapping = True, normalize: str | Mapping = "cifar_n", shuffle: bool | Mapping = True,
                 device: str | None = None, num_classes: int | None = None, name: str | None = None,
                 batch_size: int = 128, eval_batch_size: int | None = 512, num_workers: int = 0, seed: int = 0,
                 keep: Sequence[int] | None = None, attribution_augment: bool = False, drop_last: bool = False):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed,
                         keep=keep, drop_last=drop_last)
        if dataset not in ("cifar10n", "cifar100n", "cifar10n_5k"):
            raise ValueError(f"data.dataset={dataset!r}; expected cifar10n, cifar100n or cifar10n_5k")
        family = "cifar100n" if dataset == "cifar100n" else "cifar10n"
        if noise not in NOISE_KEYS[family]:
            raise ValueError(f"data.noise={noise!r} for {dataset}; expected one of {sorted(NOISE_KEYS[family])}")
        if source not in ("auto", "torchvision", "jpeg"):
            raise ValueError(f"data.source={source!r}; expected auto, torchvision or jpeg")
        if coarse and family != "cifar100n":
            raise ValueError("data.coarse=true needs dataset=cifar100n (CIFAR-10 has no superclasses)")
        if device is not None and num_workers > 0:
            raise ValueError("data.device puts the data on an accelerator; it needs data.num_workers=0")
        self.dataset, self.noise, self.family = dataset, noise, family
        # the clean labels have no noise mask: precision / recall / detection AUC would be empty numbers there
        self.has_label_noise = noise != "clean"
        self.base = "cifar100" if family == "cifar100n" else "cifar10"
        self.data_dir, self.source, self.download = Path(data_dir), source, download
        self.cache_dir = cache_dir
        self.coarse, self.subset_size, self.val_size, self.test_size = coarse, subset, val_size, test_size
        self.augment, self.device, self.name = Augment.from_config(augment), device, name or dataset
        self.shuffle, self.retrain_shuffle = _shuffle_spec(shuffle)
        self.attribution_augment = bool(attribution_augment)
        self.num_classes = 20 if coarse else (100 if family == "cifar100n" else 10)
        if num_classes is not None and num_classes != self.num_classes:
            raise ValueError(f"data.num_classes={num_classes} but {dataset} (coarse={coarse}) has {self.num_classes}")
        self.normalize = normalize
        self.mean, self.std = _normalization(normalize, self.base)
        self.class_names = CIFAR10_CLASSES if self.base == "cifar10" else tuple(str(c) for c in range(self.num_classes))
        self.image_source: str | None = None

    def check(self) -> None:
        """Images and human labels must be under ``data_dir``, or ``download=true`` must be able to fetch them.

        Images need torchvision for a download. The error is one line naming ``data.data_dir`` and what was looked
        for, before any import or download.
        """
        if self.dataset == "cifar10n_5k":
            if not (self.data_dir / PARTIAL_ARCHIVE).is_file():
                raise MissingInputError(f"data.data_dir={self.data_dir}: dataset cifar10n_5k needs {PARTIAL_ARCHIVE} "
                                        "there (the exact 5,085-image CIFAR-10 subset)")
        else:
            by_torchvision, by_jpeg = self.source in ("auto", "torchvision"), self.source in ("auto", "jpeg")
            looked = ([TORCHVISION_DIRS[self.base] + "/"] if by_torchvision else []) + (
                [str(JPEG_ARCHIVE)] if by_jpeg and self.base == "cifar10" else [])
            found = (by_torchvision and (self.data_dir / TORCHVISION_DIRS[self.base]).is_dir()) or (
                by_jpeg and self.base == "cifar10" and (self.data_dir / JPEG_ARCHIVE).is_file())
            can_download = by_torchvision and self.download
            if not found and not (can_download and importlib.util.find_spec("torchvision") is not None):
                why = ("torchvision, which data.download=true needs to download them, is not installed" if can_download
                       else "data.download is false" if by_torchvision else "")
                raise MissingInputError(f"data.data_dir={self.data_dir}: no {self.base} images there for "
                                        f"data.source={self.source} (looked for {' and '.join(looked) or 'nothing'}"
                                        + (f"; {why})" if why else ")"))
        pt_name, npz_name = LABEL_FILES[self.base]
        if not self.download and not any((folder / name).is_file() for folder in (self.data_dir, self.data_dir / "cifar-n")
                                         for name in (pt_name, npz_name)):
            raise MissingInputError(f"data.data_dir={self.data_dir}: no CIFAR-N labels ({pt_name} or {npz_name}) there "
                                    "or in its cifar-n/ folder, and data.download is false")

    # -- loading ----------------------------------------------------------------------------------------------
    def load_images(self) -> dict[str, np.ndarray]:
        """Train/test images, labels and CIFAR positions from the chosen source (sets ``image_source``)."""
        if self.dataset == "cifar10n_5k":
            path = self.data_dir / PARTIAL_ARCHIVE
            if not path.is_file():
                raise FileNotFoundError(f"dataset cifar10n_5k needs {path} (the exact 5,085-image CIFAR-10 subset)")
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            self.image_source = "partial"
            return arrays
        folder = self.data_dir / TORCHVISION_DIRS[self.base]
        jpeg = self.data_dir / JPEG_ARCHIVE
        if self.source in ("auto", "torchvision") and folder.is_dir():
            self.image_source = "torchvision"
            return read_torchvision_cifar(self.data_dir, self.base)
        if self.source in ("auto", "jpeg") and self.base == "cifar10" and jpeg.is_file():
            self.image_source = "jpeg"
            return read_jpeg_archive(jpeg, self.cache_dir)
        if self.source in ("auto", "torchvision") and self.download:
            _torchvision_download(self.data_dir, self.base)
            self.image_source = "torchvision"
            return read_torchvision_cifar(self.data_dir, self.base)
        raise FileNotFoundError(f"no {self.base} images for data.source={self.source}: looked for {folder}"
                                + (f" and {jpeg}" if self.base == "cifar10" else "")
                                + " (set data.download=true with torchvision installed to download them)")

    def build(self) -> tuple[ImageDataset, ImageDataset | None, ImageDataset]:
        """The CIFAR-N splits: images, the chosen human labels as ``label`` and the CIFAR labels as ``clean_label``."""
        arrays = self.load_images()
        labels = read_human_labels(self.data_dir, self.base, self.download)
        train_pos = arrays.get("train_index", np.arange(len(arrays["y_train"])))
        test_pos = arrays.get("test_index", np.arange(len(arrays["y_test"])))
        check_alignment(labels["clean_label"][train_pos], arrays["y_train"].astype(np.int64),
                        f"{self.dataset} ({self.image_source} images)")
        key = NOISE_KEYS[self.family][self.noise]
        clean, given = labels["clean_label"][train_pos], labels[key][train_pos]
        y_test = arrays["y_test"].astype(np.int64)
        if "class_names" in arrays and not self.coarse:
            self.class_names = tuple(str(n) for n in arrays["class_names"])
        if self.coarse:
            fine_to_coarse = _fine_to_coarse(labels)
            clean = labels["clean_coarse_label"][train_pos]
            given = labels[key.replace("_label", "_coarse_label")][train_pos]
            y_test = fine_to_coarse[y_test]

        rng = np.random.default_rng(self.seed)
        rows = np.arange(len(clean))
        val = None
        if self.val_size:
            val_rows = balanced_choice(clean, self.val_size, rng)
            rows = np.setdiff1d(rows, val_rows)
            val = self._dataset(arrays["x_train"], clean, clean, train_pos, val_rows)
        if self.subset_size:
            rows = balanced_choice(clean, self.subset_size, rng, pool=rows)
        train = self._dataset(arrays["x_train"], given, clean, train_pos, rows)
        test_rows = np.arange(len(y_test))
        if self.test_size:
            test_rows = balanced_choice(y_test, self.test_size, rng)
        test = self._dataset(arrays["x_test"], y_test, y_test, test_pos, test_rows)
        if self.normalize == "dataset":
            self.mean, self.std = channel_stats(train.columns["x"])
        return train, val, test

    def _dataset(self, x: np.ndarray, given: np.ndarray, clean: np.ndarray, pos: np.ndarray, rows: np.ndarray
                 ) -> ImageDataset:
        cols = {"x": torch.from_numpy(np.ascontiguousarray(x[rows].transpose(0, 3, 1, 2))),
                "label": torch.from_numpy(given[rows].astype(np.int64)),
                "clean_label": torch.from_numpy(clean[rows].astype(np.int64))}
        if self.device is not None:
            cols = {k: v.to(self.device) for k, v in cols.items()}
        return ImageDataset(cols, index=pos[rows])

    def with_keep(self, keep: Sequence[int]) -> "CIFARNDataModule":
        """The kept subset (see the base class), shuffled as ``shuffle.retrain`` says when ``shuffle`` is a mapping."""
        clone = super().with_keep(keep)
        clone.shuffle = self.retrain_shuffle
        return clone

    # -- loaders ----------------------------------------------------------------------------------------------
    def _loader(self, ds, shuffle: bool, batch_size: int, augment: bool = False,
                augment_seed: int = 1, drop_last: bool = False) -> DataLoader | None:
        if ds is None:
            return None
        gen = torch.Generator().manual_seed(self.seed)
        collate = _Collate(Normalize(self.mean, self.std), self.augment if augment else None,
                           torch.Generator().manual_seed(self.seed + augment_seed) if augment and self.augment else None)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate, generator=gen,  # also unshuffled: see NoisyLabelDataModule._loader
                          drop_last=drop_last, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader | ResidentBatches:
        """Training batches: :class:`ResidentBatches` on an accelerator (one process), else a DataLoader.

        Both give the same batches from the same seeded generators (shuffled when ``shuffle``, augmented when
        ``augment`` is on); under several processes the DataLoader lets Lightning give each rank its share.
        """
        trainer = getattr(self, "trainer", None)
        self.check_last_batch()
        if self.device is None or (trainer is not None and trainer.world_size > 1):
            return self._loader(self.train_set, self.shuffle, self.batch_size, augment=True, drop_last=self.drop_last)
        return ResidentBatches(self.train_set, self.batch_size, self.shuffle, torch.Generator().manual_seed(self.seed),
                               Normalize(self.mean, self.std), self.augment,
                               torch.Generator().manual_seed(self.seed + 1) if self.augment else None,
                               drop_last=self.drop_last)

    def attribution_dataloader(self, split: str = "train") -> DataLoader:
        """Unshuffled loader over a split for gathering, augmented only for the training split with ``attribution_augment``.

        The augmentation is seeded with ``seed + 2``, so every call gives the same images; otherwise as the base
        class (un-augmented).
        """
        if split == "train" and self.attribution_augment:
            return self._loader(self.train_set, False, self.eval_batch_size, augment=True, augment_seed=2)
        return super().attribution_dataloader(split)

    def images(self, split: str = "train") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Raw uint8 images [N,32,32,3], given labels, clean labels and indices of a split (for galleries)."""
        self.setup()
        ds = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[split]
        c = ds.columns
        return (c["x"].permute(0, 2, 3, 1).cpu().numpy(), c["label"].cpu().numpy(), c["clean_label"].cpu().numpy(),
                np.asarray(ds.index))

    @property
    def noise_mask(self) -> np.ndarray:
        """True where the training label differs from the clean label."""
        self.setup()
        cols = self.train_set.columns
        return (cols["label"] != cols["clean_label"]).cpu().numpy()


def _normalization(normalize: str | Mapping, base: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``data.normalize`` as (mean, std); ``dataset`` starts from the CIFAR-N constants until the data are built."""
    if normalize in ("cifar_n", "dataset"):
        return MEAN_STD[base]
    if isinstance(normalize, Mapping) and set(normalize) == {"mean", "std"}:
        mean, std = tuple(float(v) for v in normalize["mean"]), tuple(float(v) for v in normalize["std"])
        Normalize(mean, std)  # checks the lengths and signs
        if len(mean) != 3:
            raise ValueError(f"data.normalize: mean {list(mean)} and std {list(std)} need 3 values (RGB)")
        return mean, std
    raise ValueError(f"data.normalize={normalize!r}; expected cifar_n, dataset or {{mean: [r, g, b], std: [r, g, b]}}")


def _fine_to_coarse(labels: dict[str, np.ndarray]) -> np.ndarray:
    """The CIFAR-100 fine -> coarse map read off the label file (each fine class has one superclass)."""
    mapping = np.full(100, -1, dtype=np.int64)
    mapping[labels["clean_label"]] = labels["clean_coarse_label"]
    if (mapping < 0).any():
        raise ValueError("CIFAR-100N label file lacks some fine classes; cannot map the test labels to superclasses")
    return mapping


def _torchvision_download(data_dir: Path, base: str) -> None:
    try:
        import torchvision
    except ImportError as e:
        raise ImportError(f"{base} images are not under {data_dir / TORCHVISION_DIRS[base]} and torchvision is not "
                          "installed to download them: pip install 'gradsift[vision]' or place the folder there") from e
    cls = torchvision.datasets.CIFAR10 if base == "cifar10" else torchvision.datasets.CIFAR100
    for train in (True, False):
        cls(root=str(data_dir), train=train, download=True)


def _shuffle_spec(shuffle: bool | Mapping) -> tuple[bool, bool]:
    """``data.shuffle`` as ``(base, retrain)``: a bool applies to both fits; a mapping names each."""
    if isinstance(shuffle, bool):
        return shuffle, shuffle
    if isinstance(shuffle, Mapping) and set(shuffle) == {"base", "retrain"} \
            and all(isinstance(v, bool) for v in shuffle.values()):
        return bool(shuffle["base"]), bool(shuffle["retrain"])
    raise ValueError(f"data.shuffle={shuffle!r}; expected true, false or {{base: <bool>, retrain: <bool>}}")
