"""Streamed ImageFolder data (data/folder.py): every file mode read as PIL reads it, one line
naming an unreadable file (also from a DataLoader worker), crops that depend only on (seed,
epoch, index), the evaluation view, and selection without decoding."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.data import FolderImages, UnreadableImage, load_dataset, take
from analysis.data.folder import evaluation_view, read_image, training_view
from analysis.training.batches import EpochBatches
from analysis.training.distributed import Shard


def test_every_mode_and_format_reads_as_pils_rgb(mixed_folder):
    files = sorted(mixed_folder.rglob("*.*"))
    kinds = {Image.open(f).format + "/" + Image.open(f).mode for f in files}
    assert {"JPEG/RGB", "JPEG/L", "JPEG/CMYK", "PNG/RGBA", "BMP/RGB"} <= kinds
    assert any(f.suffix == ".jpg" and Image.open(f).format == "PNG" for f in files)  # PNG bytes under .jpg
    for f in files:
        ours = read_image(f).permute(1, 2, 0).numpy().astype(int)
        pil = np.asarray(Image.open(f).convert("RGB"), dtype=int)
        assert ours.shape == pil.shape and np.abs(ours - pil).max() <= 1, f


def test_a_streamed_folder_lists_classes_and_labels_and_decodes_nothing_up_front(mixed_folder):
    data = load_dataset("imagefolder", mixed_folder, image_size=40, stream=True)
    assert isinstance(data.train_x, FolderImages) and data.classes == ("class0", "class1", "class2")
    assert data.train_x.shape == (36, 3, 40, 40) and data.test_x.shape == (12, 3, 40, 40)  # test/ is val/ here
    assert data.train_y.tolist() == [0] * 12 + [1] * 12 + [2] * 12
    batch = data.test_x[torch.tensor([0, 4, 8])]
    assert batch.dtype == torch.uint8 and batch.shape == (3, 3, 40, 40)
    # Each class is one strong colour channel: the first (RGB) image of each shows it.
    assert batch.float().mean((2, 3)).argmax(1).tolist() == [0, 1, 2]
    assert load_dataset("imagenet", mixed_folder).train_x.size == 224  # imagenet always streams, at 224 by default


def test_selection_stays_undecoded_and_matches_indexing(mixed_folder):
    images = FolderImages(tuple(sorted((mixed_folder / "val").rglob("*.*"))), 32)
    mask = np.zeros(len(images), dtype=bool)
    mask[[1, 4]] = True
    assert take(images, torch.from_numpy(mask)).files == (images.files[1], images.files[4])
    assert take(images, slice(None, None, 5)).files == images.files[::5]
    assert torch.equal(take(images, torch.tensor([4, 1]))[0:2], images[torch.tensor([4, 1])])
    assert torch.equal(images[3], images[3:4][0])


def test_an_unreadable_file_is_named_in_one_line_also_from_a_loader_worker(mixed_folder, tmp_path):
    root = shutil.copytree(mixed_folder, tmp_path / "folder")
    bad = root / "train" / "class1" / "006.jpg"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    data = load_dataset("imagefolder", root, image_size=32, stream=True)
    with pytest.raises(UnreadableImage) as err:
        data.train_x[torch.arange(36)]
    assert str(err.value).splitlines() == [str(err.value)] and repr(str(bad)) in str(err.value)
    batches = EpochBatches(data.train_x, data.train_y, 12, 0, Shard(), torch.device("cpu"))
    with pytest.raises(UnreadableImage) as err:
        list(batches.epoch(0))
    assert str(err.value).startswith(f"unreadable image {str(bad)!r}") and "\n" not in str(err.value)


def test_a_training_crop_depends_only_on_seed_epoch_and_index(mixed_folder):
    image = read_image(sorted(mixed_folder.rglob("*.jpg"))[0])
    a, again = training_view(image, 48, generator_seed=7), training_view(image, 48, generator_seed=7)
    assert a.shape == (3, 48, 48) and torch.equal(a, again)
    assert not torch.equal(a, training_view(image, 48, generator_seed=8))
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    training_view(image, 48, generator_seed=7)
    assert torch.equal(torch.rand(3), before)  # the caller's generator is left alone


def test_loader_batches_are_the_same_whatever_the_order_they_are_decoded_in(mixed_folder):
    data = load_dataset("imagefolder", mixed_folder, image_size=32, stream=True)
    whole = list(EpochBatches(data.train_x, data.train_y, 12, 3, Shard(), torch.device("cpu")).epoch(1))
    halves = [list(EpochBatches(data.train_x, data.train_y, 12, 3, Shard(r, 2), torch.device("cpu")).epoch(1)) for r in (0, 1)]
    assert len(whole) == 3 and whole[0][0].shape == (12, 3, 32, 32) and whole[0][0].dtype == torch.float32
    for step, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([halves[0][step][0], halves[1][step][0]]), x)
        assert torch.equal(torch.cat([halves[0][step][1], halves[1][step][1]]), y)
    other_epoch = list(EpochBatches(data.train_x, data.train_y, 12, 3, Shard(), torch.device("cpu")).epoch(2))
    assert not torch.equal(other_epoch[0][0], whole[0][0])


def test_the_evaluation_view_is_the_centre_of_the_resized_image():
    image = torch.zeros(3, 100, 200, dtype=torch.uint8)
    image[0, :, :100] = 255  # left half red
    image[2, :, 100:] = 255  # right half blue
    view = evaluation_view(image, 64)  # shorter side to 73, then the centre 64 x 64 of 73 x 146
    assert view.shape == (3, 64, 64)
    assert view[0, :, :30].min() == 255 and view[2, :, :30].max() == 0
    assert view[2, :, 34:].min() == 255 and view[0, :, 34:].max() == 0
