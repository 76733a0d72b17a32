"""Images streamed from an ImageFolder tree: decoded when a batch is asked for, never all at once.

The ImageNet family (arch=resnet50) reads its data this way, since 1.28 M decoded ImageNet images
would not fit in memory; the CIFAR family keeps its decoded, on-device tensors (sources.py).

- Decoding: torchvision.io (libjpeg-turbo, libpng, libwebp) into RGB, which also converts
  grayscale, CMYK and palette images, and sniffs the format from the bytes, so a PNG named .jpg
  reads as the PNG it is. What torchvision cannot decode (BMP, say) goes through PIL. A file
  neither can read stops the work with one line naming it (UnreadableImage).
- Pixel limit: every image's size is read from its header first, and one over PIL's
  `Image.MAX_IMAGE_PIXELS` (89,478,485 by default; set $WIDEDEEP_MAX_IMAGE_PIXELS to change it)
  is refused the same way before anything is decoded, on both decode paths: a 6 MB JPEG of
  20,000 x 20,000 pixels would otherwise decode to 1.2 GB in each of the decoding threads.
- Evaluation view: the standard ImageNet protocol, the shorter side resized to size x 256/224
  (antialiased) and the centre size x size crop.
- Training view: RandomResizedCrop(size, scale 0.08 to 1, ratio 3/4 to 4/3) and a horizontal
  flip, drawn from a generator seeded by (seed, epoch, index), so that a resumed run, and any
  number of data-parallel processes, see exactly the crops of an uninterrupted single process.
Pixels stay uint8 until they reach the device, as on the in-memory path.

torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec's; they are kept
here because they are what every supported torchvision has (0.26 on the GPU machines measured),
and the warning, which torchvision repeats at every call, is silenced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import RandomResizedCrop

__all__ = ["FolderImages", "TrainingCrops", "UnreadableImage", "OversizeImage", "read_image", "check_pixels", "oversize", "opened", "evaluation_view", "training_view",
           "take", "DEFAULT_SIZE", "MAX_PIXELS_ENV"]

DEFAULT_SIZE = 224  # the crop side of the ImageNet recipe (image_size=0)
EVAL_RESIZE = 256 / 224  # the shorter side is resized to this x the crop side before the centre crop
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated",
                        category=DeprecationWarning)


MAX_PIXELS_ENV = "WIDEDEEP_MAX_IMAGE_PIXELS"
if os.environ.get(MAX_PIXELS_ENV):
    Image.MAX_IMAGE_PIXELS = int(os.environ[MAX_PIXELS_ENV])


class UnreadableImage(ValueError):
    """A file of the data folder that no decoder can read, or one too large to decode; the message names it."""


@contextlib.contextmanager
def opened(path: str | os.PathLike) -> Iterator[Image.Image]:
    """PIL's lazily opened image (its header read, nothing decoded), or OversizeImage when its size
    is over PIL's `Image.MAX_IMAGE_PIXELS`: the one pixel check of both decode paths."""
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # this check replaces PIL's warning
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise OversizeImage(f"more than twice the limit of {limit:,} pixels ({MAX_PIXELS_ENV})") from None
    with im:
        width, height = im.size
        if limit and width * height > limit:
            raise OversizeImage(f"{width} x {height} pixels, more than the limit of {limit:,} ({MAX_PIXELS_ENV})")
        yield im


class OversizeImage(ValueError):
    """An image over the pixel limit; the message says its size and the limit."""


def oversize(path: str | os.PathLike) -> str | None:
    """Why the image at `path` is too large to decode, read from its header alone; None when it is
    not, or when PIL does not identify the format (the decoder then decides whether it can be read)."""
    try:
        with opened(path):
            return None
    except OversizeImage as err:
        return str(err)
    except (OSError, ValueError):
        return None


def check_pixels(path: str | os.PathLike) -> None:
    """Refuse an image too large to decode (`oversize`), naming it and the fix."""
    reason = oversize(path)
    if reason:
        raise UnreadableImage(f"image {str(path)!r} is {reason}; shrink or remove it, or raise the limit with {MAX_PIXELS_ENV}=N")


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """The image at `path` as uint8 RGB (3, H, W), refused by check_pixels when too large."""
    check_pixels(path)
    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except RuntimeError:
        pass  # a format torchvision does not decode, or a damaged file: PIL decides which
    try:
        with Image.open(path) as im:  # convert() reads the whole file: truncation shows here
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UnreadableImage(f"unreadable image {str(path)!r} ({reason}); remove or replace it") from None


def evaluation_view(image: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side resized to round(size x 256/224), then the centre size x size crop."""
    return TF.center_crop(TF.resize(image, [round(size * EVAL_RESIZE)], antialias=True), [size, size])


def training_view(image: torch.Tensor, size: int, generator_seed: int) -> torch.Tensor:
    """A random resized crop to size x size and a random flip, both drawn from `generator_seed`."""
    with torch.random.fork_rng(devices=[]):  # torchvision draws crop parameters from the global generator
        torch.manual_seed(generator_seed)
        top, left, height, width = RandomResizedCrop.get_params(image, list(CROP_SCALE), list(CROP_RATIO))
        flip = bool(torch.rand(()) < 0.5)
    crop = TF.resized_crop(image, top, left, height, width, [size, size], antialias=True)
    return crop.flip(-1) if flip else crop


@cache
def _decoders() -> ThreadPoolExecutor:
    # Decoding releases the GIL, so threads use every core without pickling batches between processes.
    return ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1), thread_name_prefix="decode")


@dataclasses.dataclass(frozen=True)
class FolderImages:
    """Images of an ImageFolder split, read lazily at one size. Indexing with an int gives one
    uint8 (3, size, size) image, with a slice, index tensor or array a uint8 (B, 3, size, size)
    batch, decoded in parallel: enough of a uint8 tensor's interface for the forward-pass loop
    (nets.stream), which asks for one batch at a time. `subset` selects without decoding."""

    files: tuple[Path, ...]
    size: int

    dtype = torch.uint8

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.files), 3, self.size, self.size))

    def subset(self, index: torch.Tensor | np.ndarray | Sequence[int] | slice) -> "FolderImages":
        if isinstance(index, slice):
            return dataclasses.replace(self, files=self.files[index])
        index = np.asarray(index)
        chosen = tuple(self.files[int(i)] for i in (np.flatnonzero(index) if index.dtype == bool else index.reshape(-1)))
        return dataclasses.replace(self, files=chosen)

    def __getitem__(self, key: int | slice | torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
        if isinstance(key, (int, np.integer)):
            return self._view(self.files[key])
        files = self.subset(key).files
        if not files:
            return torch.empty(0, 3, self.size, self.size, dtype=torch.uint8)
        return torch.stack(list(_decoders().map(self._view, files)))

    def _view(self, path: Path) -> torch.Tensor:
        return evaluation_view(read_image(path), self.size)

    def to(self, _device: torch.device | str) -> "FolderImages":
        """Stays on the host: batches move to the device as they are decoded (nets.as_input)."""
        return self


def take(images: torch.Tensor | FolderImages, index: torch.Tensor | slice) -> torch.Tensor | FolderImages:
    """images[index] for a tensor; for streamed images, the selection, still undecoded."""
    return images.subset(index) if isinstance(images, FolderImages) else images[index]


@dataclasses.dataclass(frozen=True)
class TrainingCrops(torch.utils.data.Dataset):
    """The training view of streamed images for a DataLoader. An item is asked for as (index,
    epoch seed), so the crop depends on the example and the epoch, never on the worker that decodes it."""

    images: FolderImages
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, epoch_seed = key
        crop = training_view(read_image(self.images.files[index]), self.images.size, epoch_seed * 100_000_007 + index)
        return crop, self.labels[index]
