"""Images as uint8 tensors: the dataset container, deterministic training subsets, and the
batch augmentation that runs on the device (the paper's reflect-pad-4 crop and flip, inputs in
[0, 1] with no mean/std normalisation)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import torch
import torch.nn.functional as F

from .folder import FolderImages

PAD = 4
Images = torch.Tensor | FolderImages  # decoded uint8 (N, 3, H, W), or streamed from a folder


@dataclasses.dataclass
class ImageData:
    """A labelled image dataset held as uint8 tensors (on whichever device they were moved to),
    or streamed from an ImageFolder tree (FolderImages, which stay on the host)."""

    name: str
    classes: tuple[str, ...]
    train_x: Images  # (N, 3, H, W) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: Images
    test_y: torch.Tensor
    skipped_images: int = 0  # unreadable files left out (WIDEDEEP_SKIP_BAD_IMAGES=1)
    source: str = ""  # where the images came from: the data folder, or torchvision's download URL

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def test_digest(self) -> str:
        """A fingerprint of the test split as models see it: every pixel and label of in-memory
        images, or the file list (path, size, mtime) and crop size of streamed ones, with the class
        names. Whatever is computed from the test set (cached logits) is keyed by it, so another
        folder, a changed file or another image size is never mistaken for this one."""
        h = hashlib.sha256(json.dumps([self.name, list(self.classes)]).encode())
        if isinstance(self.test_x, FolderImages):
            h.update(str(self.test_x.size).encode())
            for path in self.test_x.files:
                stat = path.stat()
                h.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        else:
            h.update(str(tuple(self.test_x.shape)).encode())
            h.update(self.test_x.detach().cpu().contiguous().numpy().tobytes())
        h.update(self.test_y.detach().cpu().to(torch.int64).numpy().tobytes())
        return h.hexdigest()[:16]

    def to(self, device: torch.device | str) -> "ImageData":
        return dataclasses.replace(
            self,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            test_x=self.test_x.to(device),
            test_y=self.test_y.to(device),
        )


def subset_indices(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """A deterministic, class-stratified subset: round(fraction * count) examples of each class.

    The same (labels, fraction, seed) always gives the same sorted indices. The paper takes a
    prefix of the training set; a prefix of a class-sorted ImageFolder listing would hold only a
    few classes, hence stratification. Seeds of one configuration share the subset (the default
    seed 0), as in the paper.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"data_fraction={fraction!r} must be in (0, 1], e.g. 0.5, 0.25 or 0.0625")
    labels = labels.cpu()
    if fraction == 1:
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(labels):
        members = torch.nonzero(labels == c).flatten()
        k = max(1, round(fraction * len(members)))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.sort(torch.cat(chosen)).values


def indices_hash(indices: torch.Tensor) -> str:
    """A short fingerprint of a subset, logged so that two runs can be checked to share data."""
    return hashlib.sha256(indices.cpu().to(torch.int64).numpy().tobytes()).hexdigest()[:16]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to floats in [0, 1] (the default float type, float32 unless a float64 test
    sets it), the paper's only input scaling."""
    return images.to(torch.get_default_dtype()).div_(255)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Reflect-pad 4, random crop back to size, random horizontal flip, for a whole batch at once.

    `images` is uint8 (B, C, H, W); returns floats in [0, 1] on the same device. The generator
    must live on that device; it makes the batch's offsets and flips reproducible.
    """
    b, _, h, w = images.shape
    padded = F.pad(to_float(images), (PAD, PAD, PAD, PAD), mode="reflect")
    dev = images.device
    dy = torch.randint(0, 2 * PAD + 1, (b,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * PAD + 1, (b,), device=dev, generator=generator)
    flip = torch.rand(b, device=dev, generator=generator) < 0.5
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = torch.arange(w, device=dev).expand(b, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]
    batch = torch.arange(b, device=dev)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=dev)[None, :, None, None]
    return padded[batch, channel, rows, cols[:, None, None, :]]
