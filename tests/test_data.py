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
    with pytest.raises(FileNotFoundError, match="WIDEDEEP_DATA_DIR") as err:
        load_dataset("cifar10", tmp_path / "empty")
    assert "\n" not in str(err.value)


def test_wrong_classes_for_cifar10_are_refused(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(tmp_path / "cache"))
    for split in ("train", "test"):
        (tmp_path / "bad" / split / "only_class").mkdir(parents=True)
        src = next((tiny_data / split / "cat").iterdir())
        (tmp_path / "bad" / split / "only_class" / src.name).write_bytes(src.read_bytes())
    with pytest.raises(ValueError, match="not CIFAR-10's"):
        load_dataset("cifar10", tmp_path / "bad")


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
