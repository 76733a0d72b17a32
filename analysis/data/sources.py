"""Where datasets come from: ImageFolder trees, torchvision's CIFAR, and the decode cache.

Images are decoded once into uint8 (N, 3, H, W) tensors and cached as safetensors under the
cache directory (never in the data folder, which may be read-only).

Where data comes from (`dataset`, `data_dir`):
- cifar10 / cifar100: if `data_dir` holds an ImageFolder copy (train/<class>/*, test/<class>/*)
  it is read as is; otherwise torchvision's release is read from `data_dir`, downloading it
  there when online.
- imagefolder: any root with train/ and test/ (or val/) folders of class subfolders; images are
  resized to a common size only if they differ (first image's size wins).
- imagenet: a root with train/ and val/ class folders; it is always streamed.
With `stream`, nothing is decoded up front: the splits are FolderImages (folder.py), read a batch
at a time at `image_size` (0: 224), the ImageNet family's pipeline.
`data_dir` defaults to $WIDEDEEP_DATA_DIR, then to <cache>/data. A folder the user names is only
ever read: it must exist, and torchvision downloads only into the cache's own data folder.

In memory, every image is decoded before training starts. An unreadable one (truncated, corrupt, not an
image) stops the load with one line naming it, or, with WIDEDEEP_SKIP_BAD_IMAGES=1, is left out
and counted (`ImageData.skipped_images`, logged by `train`). A class folder with no images, in
either split, is refused: a model would otherwise be trained on fewer classes than it predicts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .folder import DEFAULT_SIZE, FolderImages, opened
from .tensors import ImageData

DATASETS = ("cifar10", "cifar100", "imagefolder", "imagenet")
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
DATA_DIR_ENV = "WIDEDEEP_DATA_DIR"
CACHE_DIR_ENV = "WIDEDEEP_CACHE_DIR"
SKIP_BAD_IMAGES_ENV = "WIDEDEEP_SKIP_BAD_IMAGES"
IN_MEMORY_MAX_IMAGES = 2_000_000  # beyond this an in-memory decode would not fit (ImageNet's 1.28 M at 32 px: 3.9 GB)


def cache_dir() -> Path:
    """Where decoded data and training checkpoints go: $WIDEDEEP_CACHE_DIR or ~/.cache/widedeep."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "widedeep")


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or cache_dir() / "data")


def check_data_dir(data_dir: str | os.PathLike | None) -> None:
    """A data folder the user names (data_dir, else $WIDEDEEP_DATA_DIR) must exist: checked before
    any work, and never created."""
    given = str(data_dir or os.environ.get(DATA_DIR_ENV) or "")
    if given and not Path(given).is_dir():
        where = "data_dir" if data_dir else DATA_DIR_ENV
        raise FileNotFoundError(f"{where}={given!r} does not exist; point it at a dataset root (train/ and test/ class "
                                f"folders, or torchvision's files), or leave data_dir and {DATA_DIR_ENV} empty to download")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, image_size: int = 0, stream: bool = False) -> ImageData:
    """Read a dataset as uint8 tensors on the CPU, through the decode cache; with `image_size`,
    every image resized to image_size x image_size (bilinear, antialiased). With `stream` (and
    always for imagenet), the splits are FolderImages of an ImageFolder tree instead."""
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r} is unknown; use one of {', '.join(DATASETS)}")
    check_data_dir(data_dir)
    named = bool(data_dir or os.environ.get(DATA_DIR_ENV))
    root = Path(data_dir) if data_dir else default_data_dir()
    if stream or name == "imagenet":
        return _stream_image_folder(name, root, image_size or DEFAULT_SIZE)
    if name == "imagefolder" or is_image_folder(root):
        data = _load_image_folder(name, root)
    else:
        data = _load_torchvision(name, root, download=not named)
    if image_size and tuple(data.train_x.shape[2:]) != (image_size, image_size):
        size = torch.Size((image_size, image_size))
        data = dataclasses.replace(data, train_x=_resize_all(data.train_x, size), test_x=_resize_all(data.test_x, size))
    return data


def is_image_folder(root: Path) -> bool:
    return (root / "train").is_dir() and _split_dir(root, "test") is not None


def _split_dir(root: Path, split: str) -> Path | None:
    candidates = ["train"] if split == "train" else ["test", "val"]
    for c in candidates:
        if (root / c).is_dir():
            return root / c
    return None


def _stream_image_folder(name: str, root: Path, size: int) -> ImageData:
    splits, classes = _list_image_folder(name, root, streamed=True)
    index = {c: i for i, c in enumerate(classes)}
    tensors = {}
    for split, files in splits.items():
        tensors[f"{split}_x"] = FolderImages(tuple(p for _, p in files), size)
        tensors[f"{split}_y"] = torch.tensor([index[c] for c, _ in files], dtype=torch.int64)
    return ImageData(name=name, classes=classes, source=str(root.resolve()), **tensors)


def _list_image_folder(name: str, root: Path, streamed: bool = False) -> tuple[dict[str, list[tuple[str, Path]]], tuple[str, ...]]:
    """The (class, file) pairs of each split, and the classes, checked against each other and `name`."""
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir={str(root)!r} does not exist; set {DATA_DIR_ENV} or data_dir to a dataset root")
    if not is_image_folder(root):
        raise FileNotFoundError(
            f"data_dir={str(root)!r} has no train/ and test/ (or val/) class folders; point data_dir at such a root"
        )
    splits = {s: _list_images(_split_dir(root, s)) for s in ("train", "test")}
    classes = tuple(sorted({c for c, _ in splits["train"]}))
    missing = sorted({c for c, _ in splits["test"]} - set(classes))
    if missing:
        raise ValueError(f"{_split_dir(root, 'test')} has class folder(s) {missing} that train/ lacks; both splits need the same classes")
    missing = sorted(set(classes) - {c for c, _ in splits["test"]})
    if missing:
        raise ValueError(f"{_split_dir(root, 'test')} lacks class folder(s) {missing} that train/ has; both splits need the same classes")
    if len(classes) < 2:
        raise ValueError(f"{root / 'train'} has {len(classes)} class folder ({', '.join(classes)}); a classifier needs two or more, "
                         "one folder of images per class under train/ and test/")
    if name == "cifar10" and classes != CIFAR10_CLASSES:
        raise ValueError(f"data_dir={str(root)!r} has classes {classes}, not CIFAR-10's {CIFAR10_CLASSES}")
    if name == "cifar100" and len(classes) != 100:
        raise ValueError(f"data_dir={str(root)!r} has {len(classes)} classes, not CIFAR-100's 100")
    if not streamed and len(splits["train"]) > IN_MEMORY_MAX_IMAGES:
        raise ValueError(f"data_dir={str(root)!r} holds {len(splits['train'])} training images, too many to decode into memory; "
                         "use dataset=imagenet or arch=resnet50, which stream them")
    return splits, classes


def _load_image_folder(name: str, root: Path) -> ImageData:
    splits, classes = _list_image_folder(name, root)

    skip = os.environ.get(SKIP_BAD_IMAGES_ENV, "") not in ("", "0", "false")
    listing = json.dumps({s: [(c, str(p.relative_to(root)), (st := p.stat()).st_size, st.st_mtime_ns) for c, p in f]
                          for s, f in splits.items()})  # a replaced file decodes anew
    key = hashlib.sha256(f"{name}|{root.resolve()}|{listing}|skip={skip}".encode()).hexdigest()[:16]

    def decode() -> dict:
        decoded = {split: _decode_files(files) for split, files in splits.items()}
        bad = [(path, reason) for _, _, failures in decoded.values() for path, reason in failures]
        if bad and not skip:
            path, reason = bad[0]
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise ValueError(f"unreadable image {str(path)!r} ({reason}){more}; remove or replace it, or set "
                             f"{SKIP_BAD_IMAGES_ENV}=1 to leave unreadable images out (their count is logged)")
        out: dict = {"skipped_images": len(bad)}
        index = {c: i for i, c in enumerate(classes)}
        for split, (images, names, _) in decoded.items():
            if not images:
                raise ValueError(f"{_split_dir(root, split)} holds no readable image")
            out[f"{split}_x"] = _stack(images)
            out[f"{split}_y"] = torch.tensor([index[c] for c in names], dtype=torch.int64)
        return out

    return dataclasses.replace(_from_cache(name, key, classes, decode), source=str(root.resolve()))


def _list_images(split_root: Path) -> list[tuple[str, Path]]:
    class_dirs = sorted(d for d in split_root.iterdir() if d.is_dir())
    if not class_dirs:
        raise FileNotFoundError(f"{split_root} holds no class subfolders of images")
    files = []
    for class_dir in class_dirs:
        images = [(class_dir.name, p) for p in sorted(class_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise ValueError(f"class folder {str(class_dir)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                             "add its images or remove the folder")
        files += images
    return files


def _decode_files(files: list[tuple[str, Path]]) -> tuple[list[torch.Tensor], list[str], list[tuple[Path, str]]]:
    """(images as uint8 (3, H, W), their class names, [(path, reason)] of the files that failed)."""
    import numpy as np

    images, names, failures = [], [], []
    for class_name, path in files:
        try:
            with opened(path) as im:  # the pixel limit from the header, then convert() reads the whole file
                images.append(torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous())
            names.append(class_name)
        except (OSError, ValueError) as err:  # unreadable, truncated, or over the pixel limit (OversizeImage)
            failures.append((path, str(err).splitlines()[0] if str(err) else type(err).__name__))
    return images, names, failures


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    """One (N, 3, H, W) tensor; images of another size than the first are resized to it."""
    size = images[0].shape[1:]
    return torch.stack([im if im.shape[1:] == size else _resize(im, size) for im in images])


def _resize(image: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return _resize_all(image[None], size)[0]


def _resize_all(images: torch.Tensor, size: torch.Size, chunk: int = 1000) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 3, *size), a chunk of images at a time."""
    out = torch.empty(len(images), images.shape[1], *size, dtype=torch.uint8)
    for s in range(0, len(images), chunk):
        resized = F.interpolate(images[s : s + chunk].float(), size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
        out[s : s + chunk] = resized.round().clamp(0, 255).to(torch.uint8)
    return out


def _load_torchvision(name: str, root: Path, download: bool) -> ImageData:
    import torchvision

    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    key = hashlib.sha256(f"{name}|{root.resolve()}|torchvision".encode()).hexdigest()[:16]

    def decode() -> dict[str, torch.Tensor]:
        out = {}
        for split, train in (("train", True), ("test", False)):
            try:
                ds = cls(str(root), train=train, download=download)
            except Exception as err:  # URLError, socket errors, read-only root, ...
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                if not download:
                    raise FileNotFoundError(
                        f"{name} is not under data_dir={str(root)!r} (neither train/ and test/ class folders nor "
                        f"torchvision's files); point data_dir or {DATA_DIR_ENV} at a copy, or leave both empty to download "
                        f"into the cache"
                    ) from None
                raise FileNotFoundError(
                    f"{name} is not under data_dir={str(root)!r} and could not be downloaded ({reason}); "
                    f"set {DATA_DIR_ENV} or -P data_dir to a local copy (torchvision's files or an ImageFolder with train/ and test/)"
                ) from None
            out[f"{split}_x"] = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            out[f"{split}_y"] = torch.tensor(ds.targets, dtype=torch.int64)
        out["classes"] = ds.classes
        return out

    return dataclasses.replace(_from_cache(name, key, None, decode), source=cls.url)


def _from_cache(name: str, key: str, classes: tuple[str, ...] | None, decode) -> ImageData:
    from safetensors.torch import load_file, save_file

    path = cache_dir() / "datasets" / f"{name}-{key}.safetensors"
    if path.exists():
        with open(path.with_suffix(".json")) as f:
            about = json.load(f)
        tensors = load_file(str(path))
        classes, skipped = tuple(about["classes"]), about.get("skipped_images", 0)
    else:
        tensors = decode()
        classes = tuple(tensors.pop("classes", classes))
        skipped = tensors.pop("skipped_images", 0)
        # Write then rename, classes first: a reader never sees tensors without their classes.
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump({"classes": list(classes), "skipped_images": skipped}, f)
            os.replace(tmp, path.with_suffix(".json"))
            save_file(tensors, str(tmp))
            os.chmod(tmp, 0o644)  # safetensors writes 0600; a cache shared by several users' workers must be readable
            os.replace(tmp, path)
        except OSError as err:
            raise PermissionError(
                f"cannot write the decoded-data cache under {path.parent} ({err.strerror or err}); "
                f"set {CACHE_DIR_ENV} to a writable folder"
            ) from None
    return ImageData(name=name, classes=classes, skipped_images=skipped, **tensors)
