import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from analysis.data import augment, indices_hash, load_dataset, subset_indices

from tests.conftest import CLASSES, TEST_PER_CLASS, TRAIN_PER_CLASS


def test_image_folder_loads_as_uint8_and_caches(tiny_data, cache_root, monkeypatch):
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(cache_root))
    data = load_dataset("cifar10", tiny_data)
    assert data.classes == CLASSES
    assert data.train_x.shape == (10 * TRAIN_PER_CLASS, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (10 * TEST_PER_CLASS, 3, 32, 32)
    assert torch.equal(torch.bincount(data.train_y), torch.full((10,), TRAIN_PER_CLASS))
    assert list((cache_root / "datasets").glob("cifar10-*.safetensors"))
    again = load_dataset("cifar10", tiny_data)  # from the cache: the same tensors
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_y, data.test_y)


def test_cache_never_writes_into_the_data_folder(tiny_data, cache_root, monkeypatch):
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(cache_root))
    before = sorted(p.name for p in tiny_data.rglob("*"))
    load_dataset("imagefolder", tiny_data)
    assert sorted(p.name for p in tiny_data.rglob("*")) == before


@pytest.mark.parametrize("name,fragment", [("mnist", "dataset='mnist'"), ("imagefolder", "does not exist")])
def test_bad_dataset_or_missing_folder(tmp_path, name, fragment):
    with pytest.raises((ValueError, FileNotFoundError), match=fragment):
        load_dataset(name, tmp_path / "nowhere")


def test_offline_cifar_without_a_local_copy_says_how_to_point_at_one(tmp_path, monkeypatch):
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("WIDEDEEP_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="could not be downloaded.*WIDEDEEP_DATA_DIR") as err:
        load_dataset("cifar10")  # downloads into the cache's data folder: offline, it cannot
    assert "\n" not in str(err.value)


def test_a_named_data_folder_is_read_never_created_or_downloaded_into(tmp_path, monkeypatch):
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="data_dir='.*nowhere' does not exist"):
        load_dataset("cifar10", tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="cifar10 is not under data_dir=.*leave both empty to download"):
        load_dataset("cifar10", tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []
    monkeypatch.setenv("WIDEDEEP_DATA_DIR", str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match="WIDEDEEP_DATA_DIR='.*gone' does not exist"):
        load_dataset("cifar10")


def copy_of(tiny_data: Path, root: Path) -> Path:
    shutil.copytree(tiny_data, root)
    return root


def test_an_unreadable_image_is_named_in_one_line_before_training(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(tmp_path / "cache"))
    root = copy_of(tiny_data, tmp_path / "data")
    victim = root / "train" / "cat" / "0003.jpg"
    victim.write_bytes(victim.read_bytes()[:200])  # truncated, as an interrupted copy leaves it
    (root / "test" / "dog" / "0001.jpg").write_text("not an image")
    with pytest.raises(ValueError) as err:
        load_dataset("cifar10", root)
    message = str(err.value)
    assert "\n" not in message and str(victim) in message and "and 1 more" in message
    assert "WIDEDEEP_SKIP_BAD_IMAGES=1" in message


def test_unreadable_images_can_be_left_out_and_are_counted(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WIDEDEEP_SKIP_BAD_IMAGES", "1")
    root = copy_of(tiny_data, tmp_path / "data")
    (root / "train" / "cat" / "0003.jpg").write_bytes(b"")
    (root / "test" / "dog" / "0001.jpg").write_text("not an image")
    clean = load_dataset("cifar10", tiny_data)
    data = load_dataset("cifar10", root)
    assert data.skipped_images == 2
    assert len(data.train_y) == len(clean.train_y) - 1 and len(data.test_y) == len(clean.test_y) - 1
    cat = data.classes.index("cat")
    assert int((data.train_y == cat).sum()) == int((clean.train_y == cat).sum()) - 1
    assert load_dataset("cifar10", root).skipped_images == 2  # from the cache, the count kept


@pytest.mark.parametrize("split,fragment", [("train", "holds no images"), ("test", "holds no images")])
def test_a_class_folder_without_images_is_refused(tiny_data, tmp_path, monkeypatch, split, fragment):
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(tmp_path / "cache"))
    root = copy_of(tiny_data, tmp_path / "data")
    for f in (root / split / "deer").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match=f"class folder '.*{split}/deer' {fragment}"):
        load_dataset("cifar10", root)


def test_a_class_missing_from_one_split_is_refused(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(tmp_path / "cache"))
    root = copy_of(tiny_data, tmp_path / "data")
    shutil.rmtree(root / "test" / "deer")
    with pytest.raises(ValueError, match=r"lacks class folder\(s\) \['deer'\] that train/ has"):
        load_dataset("imagefolder", root)


def test_wrong_classes_for_cifar10_are_refused(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(tmp_path / "cache"))
    for split in ("train", "test"):
        for name in ("apples", "pears"):
            (tmp_path / "bad" / split / name).mkdir(parents=True)
            src = next((tiny_data / split / "cat").iterdir())
            (tmp_path / "bad" / split / name / src.name).write_bytes(src.read_bytes())
    with pytest.raises(ValueError, match="not CIFAR-10's"):
        load_dataset("cifar10", tmp_path / "bad")


@pytest.mark.parametrize("stream", [False, True])
def test_a_folder_of_one_class_is_refused_before_any_image_is_read(tiny_data, tmp_path, monkeypatch, stream):
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(tmp_path / "cache"))
    for split in ("train", "test"):
        (tmp_path / "one" / split / "cat").mkdir(parents=True)
        (tmp_path / "one" / split / "cat" / "0000.jpg").write_text("never decoded")  # unreadable: the refusal comes first
    with pytest.raises(ValueError) as err:
        load_dataset("imagefolder", tmp_path / "one", stream=stream)
    assert "has 1 class folder (cat)" in str(err.value) and "two or more" in str(err.value)


@pytest.mark.parametrize("stream", [False, True])
def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tiny_data, tmp_path, monkeypatch, stream):
    from PIL import Image

    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 48 * 48)  # a 6 MB JPEG of 20,000 x 20,000 pixels, scaled down
    root = copy_of(tiny_data, tmp_path / "data")
    big = root / "test" / "dog" / "0001.jpg"
    Image.new("RGB", (64, 64)).save(big)
    Image.new("RGB", (200, 200)).save(root / "test" / "dog" / "0002.jpg")  # over twice the limit: PIL's own refusal
    decoded = []
    real = torch.from_numpy
    monkeypatch.setattr(torch, "from_numpy", lambda a: decoded.append(a.shape) or real(a))
    with pytest.raises(ValueError) as err:
        data = load_dataset("imagefolder", root, image_size=32, stream=stream)
        data.test_x[torch.arange(len(data.test_y))]
    message = str(err.value)
    assert "\n" not in message and repr(str(big)) in message and "64 x 64 pixels, more than the limit of 2,304" in message
    assert "WIDEDEEP_MAX_IMAGE_PIXELS" in message
    assert (64, 64, 3) not in decoded and (200, 200, 3) not in decoded  # refused before decoding


def test_a_replaced_image_of_the_same_size_is_decoded_anew(tiny_data, tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(tmp_path / "cache"))
    root = copy_of(tiny_data, tmp_path / "data")
    first = load_dataset("cifar10", root)
    victim = root / "test" / "cat" / "0000.jpg"
    flipped = tmp_path / "flipped.jpg"
    from PIL import Image

    with Image.open(victim) as im:
        im.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(flipped, quality=95)
    victim.write_bytes(flipped.read_bytes())
    stat = victim.stat()
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = load_dataset("cifar10", root)
    changed = (first.test_x != second.test_x).flatten(1).any(1)
    assert changed.sum() == 1


def test_subset_is_deterministic_stratified_and_seeded():
    labels = torch.arange(10).repeat_interleave(100)
    a = subset_indices(labels, 0.25, seed=0)
    assert torch.equal(a, subset_indices(labels, 0.25, seed=0))
    assert indices_hash(a) == indices_hash(subset_indices(labels, 0.25, seed=0))
    assert torch.equal(torch.bincount(labels[a]), torch.full((10,), 25))
    assert not torch.equal(a, subset_indices(labels, 0.25, seed=1))
    assert len(subset_indices(labels, 1.0)) == 1000


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5])
def test_subset_fraction_outside_unit_interval(fraction):
    with pytest.raises(ValueError, match="data_fraction"):
        subset_indices(torch.zeros(10, dtype=torch.int64), fraction)


def test_augmentation_is_a_crop_of_the_reflect_padded_image_possibly_flipped():
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(3))
    assert out.shape == (6, 3, 8, 8) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1
    padded = F.pad(images.float() / 255, (4, 4, 4, 4), mode="reflect")
    for b in range(6):
        crops = [padded[b, :, dy : dy + 8, dx : dx + 8] for dy in range(9) for dx in range(9)]
        candidates = crops + [c.flip(-1) for c in crops]
        assert any(torch.equal(out[b], c) for c in candidates)


def test_augmentation_is_reproducible_and_varies():
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    a = augment(images, torch.Generator().manual_seed(0))
    assert torch.equal(a, augment(images, torch.Generator().manual_seed(0)))
    assert not torch.equal(a, augment(images, torch.Generator().manual_seed(1)))
    flipped = sum(torch.equal(a[i], (images[i].float() / 255).flip(-1)) for i in range(64))
    assert flipped < 64  # not everything is flipped, and crops move things


def test_unwritable_cache_names_the_variable_to_set(tiny_data, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # (tests run as root, so permissions alone would not stop a write)
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(PermissionError, match="set WIDEDEEP_CACHE_DIR to a writable folder"):
        load_dataset("cifar10", tiny_data)


def test_cached_data_is_readable_by_every_worker_sharing_the_cache(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(tmp_path / "cache"))
    load_dataset("cifar10", tiny_data)
    files = list((tmp_path / "cache" / "datasets").iterdir())
    assert len(files) == 2 and {oct(f.stat().st_mode & 0o777) for f in files} == {"0o644"}
