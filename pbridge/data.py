"""Image data sets as uint8 tensors ``(N, C, H, W)`` with labels ``(N,)``.

- ``fashion-mnist`` (1 x 28 x 28): torchvision's ``FashionMNIST``; offline, the files of
  Debian's ``dataset-fashion-mnist`` are unpacked into torchvision's layout first.
- ``cifar10`` (3 x 32 x 32): torchvision's ``CIFAR10`` (``download=True`` for users online).
- ``miniimagenet`` (3 x 84 x 84): an image folder ``root/miniimagenet/<split>/<class>/*`` or the
  usual ``root/miniimagenet/mini-imagenet-cache-<split>.pkl``.
- ``digits`` (1 x 8 x 8): scikit-learn's ``load_digits`` (in the wheel), 0..16 scaled to 0..255.

``root`` defaults to ``$PBRIDGE_DATA`` or ``~/.cache/pbridge``. A missing data set raises a
``FileNotFoundError`` that names the path looked at and how to get the data.

:data:`DATASETS` is the one registry of these data sets: each :class:`DataSet` holds the name,
shape, loader, how to get the data, the command line's summary and what the presets need to
know (``pbridge.config.image_preset``); :func:`data_set` looks a name up.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "ImageData",
    "DataSet",
    "DATASETS",
    "data_set",
    "UnreadableDataError",
    "load_images",
    "default_root",
    "check_idx_file",
]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "test")

Loader = Callable[[Path, str, bool], tuple[torch.Tensor, torch.Tensor]]
"""``(root, split, download) -> (images (N, C, H, W) uint8, labels (N,))``."""


@dataclass(frozen=True)
class DataSet:
    """An entry of :data:`DATASETS`.

    Attributes:
        name: the name ``ImageConfig.dataset`` and the command line give it.
        shape: ``(C, H, W)`` of its images (:func:`load_images` checks every load against it).
        loader: ``(root, split, download) -> (images, labels)``; raises ``FileNotFoundError``
            naming the path looked at, followed by ``hint``.
        hint: how to get the data, one line (ends the loader's error when it is missing).
        summary: what it is, one line (the command line's help).
        downsamples: stride-2 stages of the presets' encoder (mini-ImageNet: 2, 84 -> 21).
        small_grid: the latent grid is small (digits: 4 x 4): the ``small`` preset then uses 32
            codes and a U-Net of two levels, ``unet_mults=(1, 2)``.
    """

    name: str
    shape: tuple[int, int, int]
    loader: Loader
    hint: str
    summary: str
    downsamples: int = 1
    small_grid: bool = False

    def not_found(self, where: str) -> FileNotFoundError:
        """The error of a missing copy: ``where`` (what was looked for, and where), then how to
        get the data."""
        return FileNotFoundError(f"{where}. {self.hint}")


@dataclass(frozen=True)
class ImageData:
    """Images ``(N, C, H, W)`` uint8 in 0..255 and integer labels ``(N,)``."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.images.shape[0] == 0:
            raise ValueError(f"the {self.name} {self.split} split is empty")
        if self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}"
            )

    def as_float(self) -> torch.Tensor:
        """Images scaled to [0, 1], float32."""
        return self.images.float() / 255.0


class UnreadableDataError(OSError):
    """Data files are present but cannot be read (truncated, corrupted, wrong format)."""


def default_root() -> Path:
    return Path(os.environ.get("PBRIDGE_DATA", Path.home() / ".cache" / "pbridge"))


def load_images(
    name: str, split: str = "train", root: str | Path | None = None, download: bool = False
) -> ImageData:
    """Load one split of a data set (see the module table) with its registry entry's loader."""
    entry = data_set(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    root = default_root() if root is None else Path(root)
    try:
        images, labels = entry.loader(root, split, download)
    except FileNotFoundError:
        raise
    except (
        OSError,
        RuntimeError,
        ValueError,
        EOFError,
        AssertionError,
        pickle.UnpicklingError,
    ) as err:
        raise UnreadableDataError(
            f"the {name} {split} split under {root} exists but cannot be read "
            f"({type(err).__name__}: {err}); delete the damaged files and fetch them again"
        ) from err
    data = ImageData(name, split, images, labels)
    if tuple(data.images.shape[1:]) != entry.shape:
        raise ValueError(
            f"{name} images have shape {tuple(data.images.shape[1:])}, expected {entry.shape}"
        )
    return data


def data_set(name: str) -> DataSet:
    """The registry's entry ``name``; an unknown name is a ``ValueError`` naming the choices."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    return DATASETS[name]


def _fashion_mnist(root: Path, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import FashionMNIST

    raw = root / "FashionMNIST" / "raw"
    wanted = [
        f"{s}-{kind}-ubyte" for s in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")
    ]
    if not download and not all((raw / f).is_file() for f in wanted):
        if not all((DEBIAN_FASHION_MNIST / f"{f}.gz").is_file() for f in wanted):
            raise DATASETS["fashion-mnist"].not_found(
                f"Fashion-MNIST not found in {raw} nor in {DEBIAN_FASHION_MNIST}"
            )
        raw.mkdir(parents=True, exist_ok=True)
        for f in wanted:
            with gzip.open(DEBIAN_FASHION_MNIST / f"{f}.gz", "rb") as src:
                tmp = raw / f"{f}.tmp"
                with open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                tmp.replace(raw / f)
    prefix = "train" if split == "train" else "t10k"
    for kind in ("images-idx3", "labels-idx1"):
        if (raw / f"{prefix}-{kind}-ubyte").is_file():
            check_idx_file(raw / f"{prefix}-{kind}-ubyte")
    ds = FashionMNIST(root, train=split == "train", download=download)
    return ds.data.unsqueeze(1).contiguous(), ds.targets.long()


def check_idx_file(path: Path) -> None:
    """Raise :class:`UnreadableDataError` naming ``path`` unless it is a whole IDX file of
    unsigned bytes: magic ``0 0 8 n``, n big-endian dimensions, then their product in bytes."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(4)
        if len(header) < 4 or header[:3] != b"\x00\x00\x08" or not 1 <= header[3] <= 4:
            raise UnreadableDataError(
                f"{path} is not an IDX file of bytes (header {header.hex() or 'empty'})"
            )
        dims = handle.read(4 * header[3])
    if len(dims) < 4 * header[3]:
        raise UnreadableDataError(f"{path} is truncated inside its header ({size} bytes)")
    shape = [int.from_bytes(dims[i : i + 4], "big") for i in range(0, len(dims), 4)]
    expected = 4 + len(dims) + int(np.prod(shape))
    if size != expected:
        raise UnreadableDataError(
            f"{path} is {'truncated' if size < expected else 'too long'}: {size} bytes, its "
            f"header (shape {tuple(shape)}) says {expected}"
        )


def _cifar10(root: Path, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(root, train=split == "train", download=download)
    except RuntimeError as err:
        raise DATASETS["cifar10"].not_found(
            f"CIFAR-10 not found (or corrupted) in {root / 'cifar-10-batches-py'}"
        ) from err
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(ds.targets, dtype=torch.long)


def _miniimagenet(root: Path, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``root/miniimagenet/<split>/<class>/*.jpg`` or ``root/miniimagenet/mini-imagenet-cache-
    <split>.pkl`` (``{"image_data": (N, 84, 84, 3) uint8, "class_dict": {class: [indices]}}``).
    The usual splits are train/val/test; ``"test"`` here reads the ``test`` files."""
    base = root / "miniimagenet"
    folder, cache = base / split, base / f"mini-imagenet-cache-{split}.pkl"
    if cache.is_file():
        with open(cache, "rb") as handle:
            content = pickle.load(handle)
        images = torch.from_numpy(np.asarray(content["image_data"], dtype=np.uint8))
        labels = torch.empty(images.shape[0], dtype=torch.long)
        for label, (_, indices) in enumerate(sorted(content["class_dict"].items())):
            labels[list(indices)] = label
        return images.permute(0, 3, 1, 2).contiguous(), labels
    if folder.is_dir():
        from PIL import Image
        from torchvision.datasets import ImageFolder
        from torchvision.transforms import v2

        transform = v2.Compose([v2.PILToTensor(), v2.Resize(84, antialias=True), v2.CenterCrop(84)])
        ds = ImageFolder(folder)
        images = []
        for path, _ in ds.samples:  # any size and colour mode, resized and cropped to 84 x 84
            try:
                with Image.open(path) as image:
                    images.append(transform(image.convert("RGB")))
            except (OSError, ValueError) as err:
                raise UnreadableDataError(f"{path} is not a readable image ({err})") from err
        return torch.stack(images), torch.tensor(ds.targets, dtype=torch.long)
    raise DATASETS["miniimagenet"].not_found(
        f"mini-ImageNet not found: neither {cache} nor an image folder {folder}"
    )


def _digits(root: Path, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 digits; a fixed 80/20 split (every fifth image is a test image).
    scikit-learn is the optional extra ``pbridge[digits]``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ModuleNotFoundError(
            "the digits data set needs scikit-learn, which is not installed: "
            + DATASETS["digits"].hint
        ) from err

    bunch = load_digits()
    images = torch.from_numpy(np.round(bunch.images * 255.0 / 16.0).astype(np.uint8))
    labels = torch.from_numpy(bunch.target).long()
    test = torch.arange(images.shape[0]) % 5 == 4
    keep = test if split == "test" else ~test
    return images[keep].unsqueeze(1).contiguous(), labels[keep]


DATASETS: dict[str, DataSet] = {
    entry.name: entry
    for entry in (
        DataSet(
            "fashion-mnist",
            (1, 28, 28),
            _fashion_mnist,
            hint="Install it offline with `apt-get install dataset-fashion-mnist`, or pass "
            "download=True (--download) to fetch it with torchvision.",
            summary="Zalando's clothing images, 10 classes",
        ),
        DataSet(
            "cifar10",
            (3, 32, 32),
            _cifar10,
            hint="Pass download=True (--download) to fetch it with torchvision.",
            summary="colour photographs, 10 classes",
        ),
        DataSet(
            "miniimagenet",
            (3, 84, 84),
            _miniimagenet,
            hint="mini-ImageNet has no public download URL; put the usual pickle files or an "
            "image folder there.",
            summary="a 100-class subset of ImageNet (bring your own copy)",
            downsamples=2,
        ),
        DataSet(
            "digits",
            (1, 8, 8),
            _digits,
            hint="pip install 'pbridge[digits]' (or pip install scikit-learn)",
            summary="scikit-learn's 1,797 handwritten digits (a run in minutes on a CPU)",
            small_grid=True,
        ),
    )
}
"""The image data sets by name, the one list of them: every reader of a data set's name,
shape, loader, hint, summary or preset facts looks here (:func:`data_set`)."""
