"""What the GPU check (benchmarks/gpu_check.sh) asserts on its device: every entry point once,
CKA on the device against the CPU's float64 (this project's networks and outside ones), and bf16
activations close to float32.

The device is $WIDEDEEP_TEST_DEVICE (default cuda: skipped on a machine without one); the check's
--dry-run runs these same tests on the CPU, in CI, so that they never rot."""

import os

import numpy as np
import pytest
import torch

from analysis.config import Grid, TrainConfig
from analysis.device import peak_flops
from analysis.training import auto_pack_size
from analysis.nets import ModelConfig, build_model, layer_names, stream
from analysis.science.cka import gram
from analysis.science.measures import MeasureAccumulator
from analysis.science.similarity import float64_cka, model_cka, pass_batches
from entrypoints import analyze, compare, predictions, study, sweep, train
from entrypoints.common import run_main
from tests.fake_store import runs_of

DEVICE = os.environ.get("WIDEDEEP_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                                   reason="no CUDA device; `bash benchmarks/gpu_check.sh --dry-run` runs these on the CPU")]
TINY = ["--epochs", "2", "--batch_size", "50", "--device", DEVICE]


def entry(module, *argv: str) -> int:
    return run_main(lambda: module.main(module.parse_args(list(argv))))


def test_every_entry_point_runs_once_on_the_device(store):
    optuna_db = f"sqlite:///{store / 'optuna.db'}"
    assert entry(sweep, "--depths", "8", "--widths", "0.25,0.5", "--seeds", "0,1", "--pack", "2", "--storage", optuna_db,
                 *TINY) == 0
    assert entry(train, "--depth", "8", "--width", "0.25", "--seeds", "3,4", "--pc1_penalty", "0.5", *TINY) == 0
    assert entry(train, "--depth", "8", "--width", "0.25", "--seed", "2", "--snapshot_every", "1", "--pc1_penalty", "0.5",
                 *TINY) == 0
    assert entry(analyze, "--search", "tags.depth='8'", "--num_examples", "60", "--batch_size", "20", "--passes", "1",
                 "--analyses", "cka,pc,probes,deletion,dominant", "--probe_examples", "100", "--device", DEVICE,
                 "--measures", "linear_cka,linear_cka_biased,rbf_cka,mutual_knn", "--knn_k", "5") == 0
    assert entry(analyze, "--models", "models:/cifar10-resnet8-w0.25@newest", "--history", "true", "--analyses", "dominant",
                 "--num_examples", "60", "--batch_size", "20", "--passes", "1", "--device", DEVICE) == 0
    assert entry(compare) == 0
    assert entry(predictions, "--group_a", "name='cifar10-resnet8-w0.25'", "--group_b", "name='cifar10-resnet8-w0.5'",
                 "--permutations", "99", "--device", DEVICE) == 0
    assert entry(study, "--preset", "smoke", "--device", DEVICE, "--storage", optuna_db, "--out", str(store / "report")) == 0
    for kind in ("sweep", "train", "pack", "analyze", "compare", "predictions", "study"):
        assert runs_of(kind, "FINISHED"), f"no finished {kind} run"
    trained = runs_of("train", "FINISHED")
    assert any("train_pc1_share" in r.data.metrics for r in trained)  # the penalty's differentiable eigenvalue on the device
    assert {r.data.params["device"] for r in trained} == {DEVICE}
    if peak_flops(torch.device(DEVICE)):  # model FLOP utilisation on GPUs of known peak
        assert all(0 < r.data.metrics["mfu"] < 1 for r in trained)
    assert (store / "report" / "report.html").exists()


def test_auto_pack_size_packs_what_fits_on_the_device():
    grid = Grid(depths=(8,), widths=(0.5,), seeds=tuple(range(64)), data_fractions=(1.0,))
    size = auto_pack_size(grid, TrainConfig(depth=8, width=0.5, batch_size=50, device=DEVICE))
    # on the CPU no pack (measured slower); a ResNet-8 w0.5 step needs tens of MB, so 64 fit on any GPU
    assert size == (64 if torch.device(DEVICE).type == "cuda" else 1)


def cka_inputs(images: int = 200):
    torch.manual_seed(0)
    config = ModelConfig(14, 0.5)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=g)
    return build_model(config).eval(), layer_names(config), x


def test_cka_on_the_device_matches_the_cpus_float64_within_1e_6():
    model, names, images = cka_inputs()
    on_device = model_cka([model.to(DEVICE)], [names], images, torch.zeros(len(images), dtype=torch.long), batch_size=50,
                          passes=1, progress=False).within(0)
    reference = float64_cka(model.cpu(), names, images, pass_batches(len(images), 50, 1, 0))
    assert np.abs(on_device - reference).max() <= 1e-6


def test_every_measure_on_the_device_matches_the_cpus_float64():
    from analysis.config import MEASURES

    model, names, images = cka_inputs()
    batches = pass_batches(len(images), 50, 1, 0)
    on_device = model_cka([model.to(DEVICE)], [names], images, torch.zeros(len(images), dtype=torch.long), batch_size=50,
                          passes=1, progress=False, measures=MEASURES, knn_k=5)
    model = model.cpu()
    for measure in MEASURES[1:]:
        acc = MeasureAccumulator(measure, names, knn_k=5)
        for index in batches:
            grams = torch.empty(len(names), len(index), len(index), dtype=torch.float64)
            stream(model, images[index], names, lambda i, out, _r: grams.__setitem__(i, gram(out, torch.float64)), batch_size=len(index))
            acc.update_grams(grams)
        tolerance = 0.02 if measure == "mutual_knn" else 1e-5  # a neighbour tied in float32 may swap
        assert np.abs(on_device.within(0, measure) - acc.compute()).max() <= tolerance, measure


def test_outside_models_on_the_device_match_the_cpus_float64():
    """A torchvision ResNet-18 (its residual sums, functional operations tapped) and a small ViT
    (its blocks), random weights, their declared inputs, analysed together on the device: each
    one's CKA against the CPU's float64, the cross matrix's shape."""
    from analysis.store.sources import load_source
    from tests.test_sources import RESNET, VIT

    images = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    loaded = [load_source(source, DEVICE) for source in (RESNET, VIT)]
    names = [loaded[0].layer_names("layer*.add"), loaded[1].layer_names("blocks")]  # the ResNet's residual sums: tapped
    joint = model_cka([m.model for m in loaded], names, images, torch.zeros(len(images), dtype=torch.long), batch_size=50,
                      passes=1, progress=False)
    assert joint.cross(0, 1).shape == (8, 2)
    for i, m in enumerate(loaded):
        reference = float64_cka(m.model.cpu(), names[i], images, pass_batches(len(images), 50, 1, 0))
        assert np.abs(joint.within(i) - reference).max() <= 1e-5, m.label


def test_bf16_activations_stay_close_to_float32():
    model, names, images = cka_inputs()
    model = model.to(DEVICE)
    labels = torch.zeros(len(images), dtype=torch.long)
    full = model_cka([model], [names], images, labels, batch_size=50, passes=1, progress=False).within(0)
    half = model_cka([model], [names], images, labels, batch_size=50, passes=1, progress=False, bf16=True).within(0)
    assert np.abs(half - full).max() < 0.05  # measured and reported by benchmarks/precision.py


def test_the_imagenet_family_streams_trains_and_is_analysed_on_the_device(store, mixed_folder):
    """The streamed path: DataLoader workers, pinned memory and non-blocking copies to the device."""
    assert entry(train, "--arch", "resnet50", "--width", "0.25", "--image_size", "64", "--dataset", "imagefolder",
                 "--data_dir", str(mixed_folder), "--epochs", "2", "--batch_size", "12", "--device", DEVICE) == 0
    assert entry(analyze, "--models", "models:/imagefolder-resnet50-d50-w0.25@newest", "--data_dir", str(mixed_folder),
                 "--layers", "blocks", "--analyses", "cka,pc,dominant", "--num_examples", "12", "--batch_size", "6",
                 "--passes", "2", "--dominant_top", "2", "--device", DEVICE) == 0
    [trained] = [r for r in runs_of("train", "FINISHED") if r.data.params["arch"] == "resnet50"]
    assert trained.data.params["device"] == DEVICE and trained.data.metrics["images_per_sec"] > 0
