"""Every knob of the project in one place: the training recipe and its presets, the analysis
options, the thresholds that turn numbers into findings, the sweep grid and the study presets.

The paper's CIFAR recipe (Nguyen, Raghu & Kornblith, 2021): SGD with momentum 0.9, lr 0.01 with
cosine decay to 0, batch 128, L2 1e-4 on conv and dense kernels (weight_decay 2e-4 in PyTorch's
convention, since Keras adds lambda * ||w||^2 to the loss and its gradient is 2 * lambda * w),
300 epochs, reflect-pad-4 crops and flips, inputs in [0, 1]. The CIFAR presets differ only in
epochs: `quick` finishes a ResNet-20 on the full training set in minutes on 2 cores. `imagenet`
is the paper's ImageNet recipe for the ResNet-50 family: 120 epochs, batch 256, lr 0.1 with
cosine decay, weight decay 1e-4 (the standard ResNet-50 value, already in PyTorch's convention:
TensorFlow's l2_loss halves the square), streamed 224-pixel crops.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math

__all__ = [
    "short_number", "require", "TRAIN_PRESETS", "PRESET_FIELDS", "DEVICES", "CLEAN_TRAIN_EVAL_MAX", "TrainConfig", "resolve_preset",
    "ANALYSES", "LAYER_SETS", "PROBE_TRAIN", "PRECISIONS", "BATCHNORM_MODES", "MIN_HSIC_BATCH", "MEASURES",
    "AnalysisOptions", "BLOCK_THRESHOLD", "BLOCK_MIN_FRAC", "BLOCK_MIN_LAYERS", "PROBE_RIDGE", "PROBE_MEMORY_BYTES", "FITS_TRAINING_SET",
    "SWEEP_HEARTBEAT_SECONDS", "SWEEP_MAX_RETRIES", "parse_values", "grid_cells", "Grid", "StudyPreset", "STUDY_PRESETS", "study_preset",
]  # fmt: skip


def short_number(value: float) -> str:
    """How widths and data fractions are written in names, tags and labels: 1.0 -> '1', 0.25 -> '0.25'."""
    return f"{value:g}"


def require(ok: bool, name: str, value: object, allowed: str) -> None:
    """Refuse a setting in the project's one-line form: its name, its value, what is allowed."""
    if not ok:
        raise ValueError(f"{name}={value!r} is not allowed; use {allowed}")


def _check(obj, checks: list[tuple[bool, str, str]]) -> None:
    """Refuse the first failed check of a dataclass's fields."""
    for ok, name, allowed in checks:
        require(ok, name, getattr(obj, name), allowed)


# --- training -------------------------------------------------------------------------------
TRAIN_PRESETS: dict[str, dict] = {
    "quick": {"epochs": 2},
    "paper": {"epochs": 300},
    "imagenet": {"epochs": 120, "batch_size": 256, "lr": 0.1, "weight_decay": 1e-4, "arch": "resnet50", "dataset": "imagenet"},
}
PRESET_FIELDS = ("epochs", "batch_size", "lr", "weight_decay", "arch", "dataset")  # what a preset may set
DEVICES = ("auto", "cpu", "cuda")
CLEAN_TRAIN_EVAL_MAX = 10_000  # training examples scored without augmentation at the end (train_accuracy)


def snapshot_epochs(epochs: int, every: int) -> tuple[int, ...]:
    """The epochs a training of `epochs` with snapshot_every=`every` keeps snapshots of: 0 (before
    training), every `every`-th, and the last; none when `every` is 0."""
    return tuple(sorted({*range(0, epochs + 1, every), epochs})) if every > 0 else ()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training is given. The values are checked here; whether the family (arch),
    its depth and width, the dataset and the penalised layers exist is checked with them
    (training.settings.check), since this module imports nothing of the project."""

    depth: int = 20
    width: float = 1.0
    seed: int = 0
    data_fraction: float = 1.0
    epochs: int = TRAIN_PRESETS["quick"]["epochs"]
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 2e-4
    dataset: str = "cifar10"
    data_dir: str = ""  # "" means $WIDEDEEP_DATA_DIR, then the cache's data folder
    device: str = "auto"
    subset_seed: int = 0  # picks the data_fraction subset; shared by all seeds, as in the paper
    eval_batch_size: int = 1000
    eval_every: int = 1  # epochs between test-set evaluations; the last epoch is always evaluated
    val_fraction: float = 0.0  # > 0: hold out this share of the training subset and score it instead of the test set
    channels_last: bool = True  # measured faster on CPU and GPU alike (docs/performance.md)
    compile: bool = False  # torch.compile the training step; off by default: see docs/performance.md
    snapshot_every: int = 0  # > 0: keep the weights every this many epochs (and at 0 and the end) for analyze history
    pc1_penalty: float = 0.0  # > 0: add this times the PC1 share of the penalised layers' batch activations to the loss
    pc1_penalty_layers: str = "all"  # residual block outputs penalised: all, or names / prefixes such as stage3
    arch: str = "resnet"  # the model family (nets/families): "resnet", the CIFAR family; "resnet50", the ImageNet family
    image_size: int = 0  # > 0: images resized to image_size x image_size (0: as stored)

    def __post_init__(self) -> None:
        _check(self, [
            (0 < self.data_fraction <= 1, "data_fraction", "in (0, 1], e.g. 0.5 or 0.25"),
            (self.epochs >= 1, "epochs", "an integer >= 1"),
            (self.batch_size >= 2, "batch_size", "an integer >= 2 (BatchNorm needs two examples)"),
            (self.lr > 0, "lr", "a positive float"),
            (0 <= self.momentum < 1, "momentum", "in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", "a float >= 0"),
            (self.device in DEVICES, "device", f"one of {', '.join(DEVICES)}"),
            (self.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1"),
            (self.eval_every >= 1, "eval_every", "an integer >= 1"),
            (0 <= self.val_fraction < 1, "val_fraction", "in [0, 1)"),
            (self.snapshot_every >= 0, "snapshot_every", "an integer >= 0 (0: no snapshots)"),
            (self.pc1_penalty >= 0, "pc1_penalty", "a float >= 0 (0: no penalty)"),
            (self.image_size == 0 or self.image_size >= 8, "image_size", "0 (as stored) or an integer >= 8"),
        ])  # fmt: skip

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def snapshot_epochs(self) -> tuple[int, ...]:
        """The epochs whose weights a training keeps (snapshot_every)."""
        return snapshot_epochs(self.epochs, self.snapshot_every)

    @classmethod
    def from_dict(cls, fields: dict) -> "TrainConfig":
        """The config of `to_dict` (as JSON gives it back): every field's type restored, an unknown
        field refused rather than dropped."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise ValueError(f"training settings {unknown} are unknown to this version of the code")
        kinds = {"int": int, "float": float, "str": str, "bool": bool}
        return cls(**{k: kinds[known[k].type](v) for k, v in fields.items()})

    def fingerprint(self, *extra: str) -> str:
        """A hash of everything that determines the trained weights (device settings excluded)."""
        fields = dataclasses.asdict(self)
        for k in ("device", "eval_batch_size", "eval_every", "channels_last", "compile", "snapshot_every"):
            fields.pop(k)
        # Settings at the values they had before they existed leave the hash alone, so that models
        # trained before keep their identity (sweeps skip them, checkpoints resume).
        if not self.pc1_penalty:
            fields.pop("pc1_penalty")
            fields.pop("pc1_penalty_layers")
        for key, before in (("arch", "resnet"), ("image_size", 0)):
            if fields[key] == before:
                fields.pop(key)
        return hashlib.sha256(json.dumps([fields, *extra], sort_keys=True).encode()).hexdigest()[:20]


def resolve_preset(preset: str, given: dict) -> dict:
    """TrainConfig fields from `given` (None: not given), a missing one from the preset, else left
    to TrainConfig's default."""
    if preset not in TRAIN_PRESETS:
        raise ValueError(f"preset={preset!r} is unknown; use one of {', '.join(TRAIN_PRESETS)}")
    if given.get("epochs") is not None and given["epochs"] < 0:
        raise ValueError(f"epochs={given['epochs']!r} is not allowed; use an integer >= 1, or 0 for the preset's count")
    chosen = {k: v for k, v in given.items() if v is not None and not (k == "epochs" and v == 0)}
    return {**TRAIN_PRESETS[preset], **chosen}


# --- analysis -------------------------------------------------------------------------------
ANALYSES = ("cka", "pc", "probes", "deletion", "dominant")
LAYER_SETS = ("all", "blocks")
PROBE_TRAIN = ("subset", "full", "both")
PRECISIONS = ("float32", "bf16")
BATCHNORM_MODES = ("auto", "running", "batch")  # auto: running for final models, batch for training snapshots
MIN_HSIC_BATCH = 4  # the unbiased HSIC estimator divides by n - 3 and n - 2 (science/cka.py)
MEASURES = ("linear_cka", "linear_cka_biased", "rbf_cka", "mutual_knn")  # science/measures.py; linear_cka is the paper's


@dataclasses.dataclass(frozen=True)
class AnalysisOptions:
    """What `analyze` computes, on what. Defaults follow the paper: the 10,000 test images,
    batches of 256, 10 reshuffled passes; probes on 2x2 max-pooled features."""

    analyses: tuple[str, ...] = ("cka", "pc")
    layers: str = "all"  # all, blocks, or a comma list of name patterns ("stage3.*.relu"); nets.layer_names
    num_examples: int = 10_000  # 0: the whole test set
    batch_size: int = 256
    passes: int = 10
    seed: int = 0  # picks the examples and the batch order
    pc_iterations: int = 6
    probe_examples: int = 10_000  # training examples per probe (0: all)
    probe_pool: int = 2
    probe_train: str = "subset"  # the model's own training subset, the full training set, or both
    precision: str = "float32"  # activations; "bf16": autocast on CUDA, faster, error measured in docs/performance.md
    dominant_top: int = 10  # dominant examples per layer (science/dominant.py)
    history: bool = False  # also analyse the snapshots kept during training (train -P snapshot_every)
    batchnorm: str = "auto"  # BatchNorm statistics: running (stored), batch (each analysed batch's own), auto (see bn_mode)
    measures: tuple[str, ...] = ("linear_cka",)  # similarity measures (science/measures.py); linear_cka always runs
    rbf_fraction: float = 0.8  # rbf_cka's bandwidth, a fraction of the median distance (Kornblith et al. 2019)
    knn_k: int = 10  # mutual_knn's neighbours per example (Huh et al. 2024)

    def __post_init__(self) -> None:
        unknown = set(self.analyses) - set(ANALYSES)
        if unknown or not self.analyses:
            raise ValueError(f"analyses={','.join(self.analyses)!r} has unknown names {sorted(unknown)}; "
                             f"use a comma list of {', '.join(ANALYSES)}")
        unknown = set(self.measures) - set(MEASURES)
        if unknown or not self.measures:
            raise ValueError(f"measures={','.join(self.measures)!r} has unknown names {sorted(unknown)}; "
                             f"use a comma list of {', '.join(MEASURES)}")
        _check(self, [
            (any(p.strip() for p in self.layers.split(",")), "layers", f"one of {', '.join(LAYER_SETS)}, list, or a comma list of name patterns"),
            (self.num_examples >= 0, "num_examples", "an integer >= 0 (0: the whole test set)"),
            (self.batch_size >= MIN_HSIC_BATCH, "batch_size", f"an integer >= {MIN_HSIC_BATCH} (unbiased HSIC; the paper: 256)"),
            (self.num_examples == 0 or self.num_examples >= MIN_HSIC_BATCH, "num_examples", f"0 or an integer >= {MIN_HSIC_BATCH}"),
            (self.passes >= 1, "passes", "an integer >= 1 (the paper: 10)"),
            (self.seed >= 0, "seed", "an integer >= 0"),
            (self.pc_iterations >= 1, "pc_iterations", "an integer >= 1"),
            (self.probe_examples >= 0, "probe_examples", "an integer >= 0 (0: all)"),
            (self.probe_pool >= 1, "probe_pool", "an integer >= 1 (1: no pooling, the paper: 2)"),
            (self.probe_train in PROBE_TRAIN, "probe_train", f"one of {', '.join(PROBE_TRAIN)}"),
            (self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}"),
            (self.dominant_top >= 1, "dominant_top", "an integer >= 1"),
            (self.batchnorm in BATCHNORM_MODES, "batchnorm", f"one of {', '.join(BATCHNORM_MODES)}"),
            (self.rbf_fraction > 0 and math.isfinite(self.rbf_fraction), "rbf_fraction",
             "a positive fraction of the median distance, e.g. 0.8"),
            ("mutual_knn" not in self.measures or 1 <= self.knn_k < min(self.batch_size, self.num_examples or self.batch_size),
             "knn_k", "an integer >= 1 and below the batch size"),
            ("dominant" not in self.analyses or "pc" in self.analyses, "analyses", "pc with dominant (it ranks examples on PC1)"),
        ])  # fmt: skip

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    def bn_mode(self, snapshot: bool) -> str:
        """running or batch: `auto` analyses a final model with its stored statistics (the paper)
        and a training snapshot with batch statistics (the authors' code for checkpoints; the
        stored statistics of a young network are its initial ones)."""
        if self.batchnorm != "auto":
            return self.batchnorm
        return "batch" if snapshot else "running"

    @staticmethod
    def parse_analyses(text: str) -> tuple[str, ...]:
        """'pc,probes' -> ('cka', 'pc', 'probes'): CKA always runs, the others need its blocks;
        dominant brings pc, whose scores it ranks."""
        names = [a.strip() for a in text.split(",") if a.strip()]
        return tuple(dict.fromkeys(["cka", *(["pc"] if "dominant" in names else []), *names]))


# Block rule (science/blocks.py explains the calibration on the CPU study, docs/cpu-study.md):
# a contiguous range of layers with mean off-diagonal CKA >= BLOCK_THRESHOLD over at least
# BLOCK_MIN_FRAC of all layers and never fewer than BLOCK_MIN_LAYERS.
BLOCK_THRESHOLD = 0.94
BLOCK_MIN_FRAC = 0.2
BLOCK_MIN_LAYERS = 4
# Linear probes: ridge = PROBE_RIDGE x the layer's mean feature variance (scale-invariant); the
# layers' normal equations are fitted in groups that fit PROBE_MEMORY_BYTES (science/probes.py).
PROBE_RIDGE = 1e-3
PROBE_MEMORY_BYTES = 1 << 29  # 512 MiB
# Below this clean training accuracy a model has not fitted its training set, and an under-trained
# ResNet looks like one big block (docs/cpu-study.md: a ResNet-110 that failed to train at lr 0.05
# had "blocks" over 73% of its layers and a PC1 share of 0.99).
FITS_TRAINING_SET = 0.9

# --- sweeps ---------------------------------------------------------------------------------
# A worker silent for 3 heartbeats is presumed dead; its trial is failed and re-queued, twice at most.
SWEEP_HEARTBEAT_SECONDS = 30
SWEEP_MAX_RETRIES = 2


def parse_values(text: str, kind: type, name: str) -> tuple:
    """A comma list of ints or floats, each value once, in order ('8.0' is the int 8); refused in
    one line naming the setting."""
    try:
        out = tuple(dict.fromkeys(kind(float(v)) if kind is int and float(v).is_integer() else kind(v.strip())
                              for v in text.split(",") if v.strip()))
    except (ValueError, OverflowError):
        example = "20,56" if kind is int else "1,2,4"
        raise ValueError(f"{name}={text!r} is not a comma-separated list of {kind.__name__}s, e.g. {example}") from None
    if not out:
        raise ValueError(f"{name} is empty; give at least one value")
    return out


def grid_cells(space: dict[str, list]) -> list[dict]:
    """Every combination of a search space's values, as {name: value}, in order."""
    return [dict(zip(space, values)) for values in itertools.product(*space.values())]


@dataclasses.dataclass(frozen=True)
class Grid:
    """The width x depth x seed x data-fraction grid of a sweep."""

    depths: tuple[int, ...]
    widths: tuple[float, ...]
    seeds: tuple[int, ...]
    data_fractions: tuple[float, ...]

    @classmethod
    def parse(cls, depths: str, widths: str, seeds: str, data_fractions: str) -> "Grid":
        """The grid from comma lists (its cells are checked as trainings by training.settings.check_grid)."""
        return cls(parse_values(depths, int, "depths"), parse_values(widths, float, "widths"),
                   parse_values(seeds, int, "seeds"), parse_values(data_fractions, float, "data_fractions"))

    def search_space(self) -> dict[str, list]:
        return {"depth": list(self.depths), "width": list(self.widths), "seed": list(self.seeds),
                "data_fraction": list(self.data_fractions)}

    def cells(self) -> list[dict]:
        """Every cell as {depth, width, seed, data_fraction}, in grid order."""
        return grid_cells(self.search_space())

    def configs(self, base: TrainConfig) -> list[TrainConfig]:
        """Every cell as the training `base` with the cell's depth, width, seed and data fraction."""
        return [dataclasses.replace(base, **cell) for cell in self.cells()]

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.search_space().values())


# --- studies --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StudyPreset:
    name: str
    grid: Grid
    train: dict  # TrainConfig fields shared by every cell
    analysis: AnalysisOptions
    contrast: tuple[tuple[int, float], tuple[int, float]]  # (depth, width) of group A and group B
    description: str
    workers: int = 1  # sweep processes training cells at once (several share one GPU well)
    series: tuple[Grid, ...] = ()  # more grids swept after `grid` (a depth series beside a width series)
    pack: int = 1  # seeds of a cell trained together (sweep -P pack); 0: auto

    @property
    def grids(self) -> tuple[Grid, ...]:
        return (self.grid, *self.series)

    def cells(self) -> list[dict]:
        """Every cell of every grid, each once, in order."""
        return list({tuple(cell.values()): cell for grid in self.grids for cell in grid.cells()}.values())

    @property
    def data_fractions(self) -> tuple[float, ...]:
        return tuple(dict.fromkeys(f for grid in self.grids for f in grid.data_fractions))

    def base_config(self, dataset: str, data_dir: str, device: str) -> TrainConfig:
        return TrainConfig(depth=self.grid.depths[0], width=self.grid.widths[0], data_fraction=self.grid.data_fractions[0],
                           dataset=dataset, data_dir=data_dir, device=device, **self.train)


STUDY_PRESETS = {p.name: p for p in (
    StudyPreset(
        "smoke", Grid(depths=(8,), widths=(0.25, 0.5), seeds=(0, 1), data_fractions=(1.0,)),
        {"epochs": 2, "batch_size": 50, "lr": 0.05},
        AnalysisOptions(ANALYSES, num_examples=60, batch_size=20, passes=1, pc_iterations=2, probe_examples=200),
        contrast=((8, 0.25), (8, 0.5)), description="tiny models on whatever data is given, to test the pipeline end to end"),
    # Chosen by experiment on a 2-core CPU (docs/cpu-study.md): a deep ResNet on 2% of CIFAR-10,
    # over-parameterised relative to its data, against a shallow control.
    StudyPreset(
        "cpu", Grid(depths=(20, 56), widths=(1.0,), seeds=(0, 1), data_fractions=(0.02,)),
        {"epochs": 80, "lr": 0.05, "eval_every": 80},
        AnalysisOptions(ANALYSES, num_examples=1000, batch_size=250, passes=2, pc_iterations=4, probe_examples=1000),
        contrast=((20, 1.0), (56, 1.0)),
        description="ResNet-56 (deep) against ResNet-20 (control), width 1, on 2% of CIFAR-10, two seeds each"),
    # Fifteen minutes of one GPU, on the 1/16 of CIFAR-10 (3,120 images) that
    # benchmarks/prepare_gpu_check.sh copies out, with the paper's recipe (300 epochs, all of it): the
    # paper's trend, not one contrast. A depth series (ResNet-20, 32, 56 at width 1) and a width
    # series (ResNet-20 at widths 1, 2, 4), four seeds each, every cell's seeds trained as one pack.
    # The estimate it was sized by (no GPU was lent while it was built): training FLOPs of the 20
    # models (training.step_flops_per_image x 300 epochs x 3,120 images) are 0.9e15 (20w1), 1.6e15
    # (32w1), 2.8e15 (56w1), 3.6e15 (20w2) and 1.5e16 (20w4). The width-1 packs are bound by kernel
    # launches: at the H200's measured 14.6k (ResNet-20) and 6.1k (ResNet-56) steps' worth of images
    # per second alone, a pack of four runs 4x the images per launch, about 65, 100 and 155 s; the
    # wide cells are bound by arithmetic: at 5% and 14% of the bf16 peak (the measured utilisation of
    # ResNet-20 w8 alone), about 75 and 105 s. About 500 s one after another, about 4 minutes with
    # two workers, then about a minute of analysis. ResNet-110 and width 8 (5.7e15 and 6.3e16 FLOPs)
    # do not fit. The GPU check caps it and says so if it does not finish.
    StudyPreset(
        "gpu", Grid(depths=(20, 32, 56), widths=(1.0,), seeds=(0, 1, 2, 3), data_fractions=(1.0,)),
        {"epochs": 300, "eval_every": 300},
        AnalysisOptions(ANALYSES, num_examples=2000, batch_size=250, passes=2, pc_iterations=4, probe_examples=3125),
        contrast=((56, 1.0), (20, 4.0)), workers=2, pack=0,
        series=(Grid(depths=(20,), widths=(1.0, 2.0, 4.0), seeds=(0, 1, 2, 3), data_fractions=(1.0,)),),
        description="a depth series (ResNet-20, 32, 56 at width 1) and a width series (ResNet-20 at widths 1, 2, 4), "
                    "four seeds each trained as packs, the paper's recipe on the data given (the GPU check: 1/16 of "
                    "CIFAR-10), on one GPU"),
    StudyPreset(
        "paper", Grid(depths=(20, 56, 110), widths=(1.0, 2.0, 4.0, 8.0, 10.0), seeds=tuple(range(10)),
                      data_fractions=(1.0, 0.5, 0.25, 0.0625)),
        {"epochs": 300}, AnalysisOptions(ANALYSES), contrast=((110, 1.0), (20, 10.0)),
        description="the paper's CIFAR-10 grid and recipe (300 epochs, 10 seeds); GPU days"),
)}


def study_preset(name: str) -> StudyPreset:
    if name not in STUDY_PRESETS:
        raise ValueError(f"preset={name!r} is unknown; use one of {', '.join(STUDY_PRESETS)}")
    return STUDY_PRESETS[name]
