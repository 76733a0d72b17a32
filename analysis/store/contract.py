"""The tracking-store contract: every tag key, metric name and artifact path this project writes
or reads, spelled once. Writers (training, science, stages, render) and readers (queries, results,
report, tests) import these names, so a renamed key is an AttributeError, not an empty column.
It imports nothing, so every layer may use it; the typed records built on it are
store/versions.py (a version's tags) and store/summary.py (an analysis's summary.json).

Runs. Every run is tagged with its KIND and the process doing it (PROCESS_HOST, PROCESS_PID);
a failed run carries ERROR, the one-line message the user saw.
- train runs: LINEAGE, FINGERPRINT, RESUMED_FROM (when resumed), REGISTERED_MODEL + MODEL_VERSION,
  the per-epoch TRAINING_METRICS and the FINAL_METRICS; a model trained in a pack (train -P
  seeds=...) has the same train run, nested under the pack's run and tagged PACK_RUN;
- pack runs: param PACK_SEEDS, metric PACK_IMAGES_PER_SEC per epoch, PACK_FAILED (the seeds that
  diverged) where any did;
- analyze runs, one per model (nested under the group's run when several are analysed together):
  ANALYSIS_MODEL_URI, MODEL_NAME, MODEL_VERSION, TRAIN_RUN_ID, the version's config tags, metrics
  BLOCK_METRICS + EXPLANATION_METRICS, artifacts under CKA_DIR (MODEL_ARTIFACTS); the group's run
  holds ANALYSIS_MODELS and the cross-model matrices under cross_dir(a, b);
- compare runs: COMPARISON_DIR; predictions runs: GROUP_A, GROUP_B, LOGITS_DIR, PREDICTIONS_DIR;
- sweep runs: SWEEP_* tags; study runs: STUDY_PRESET and the report under REPORT_DIR.
Model versions: the config tags VERSION_CONFIG, VERSION_ACCURACY, provenance, the analysis
metrics with ANALYSIS_RUN_ID, TEST_LOGITS.<test set digest> (a runs:/ URI of cached logits) and STUDY_ANALYSED.
"""

from __future__ import annotations

import hashlib
import json

# --- run tags ---------------------------------------------------------------------------------
KIND = "widedeep.kind"
KINDS = ("train", "pack", "analyze", "compare", "predictions", "sweep", "search", "study")
PROCESS_HOST = "process.host"
PROCESS_PID = "process.pid"
ERROR = "error"
LINEAGE = "lineage"  # one id per training, kept across resumes
FINGERPRINT = "fingerprint"  # config + store + experiment: the identity sweeps skip on
RESUMED_FROM = "resumed_from_run"
PACK_RUN = "pack_run"  # on the train run of a model trained in a pack: the pack's run id
PACK_SEEDS = "seeds"  # param of a pack run: its seeds, as a comma list
PACK_FAILED = "pack.failed_seeds"  # tag of a pack run: the seeds whose training diverged
REGISTERED_MODEL = "registered_model"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
TRAIN_RUN_ID = "train_run_id"
ANALYSIS_MODEL_URI = "analysis.model_uri"
ANALYSIS_MODELS = "analysis.models"
ANALYSIS_NEWEST = "analysis.newest"  # "true" on the newest analysis run of each version, and on no other
PARENT_RUN = "mlflow.parentRunId"  # MLflow's own tag on a nested run
NOTE = "mlflow.note.content"  # MLflow's own tag: a run's description
GROUP_A = "group_a"
GROUP_B = "group_b"
TEST_DIGEST = "test_digest"  # a predictions run: the digest of the test set it scored (ImageData.test_digest)
SWEEP_STUDY = "sweep.study"
SWEEP_STORAGE = "sweep.storage"
SWEEP_MODE = "sweep.mode"
SWEEP_GRID_SIZE = "sweep.grid_size"
SWEEP_TRIAL = "sweep.trial"
STUDY_PRESET = "study.preset"

# --- model version tags (parsed and formatted by store/versions.py) -----------------------------
DATASET = "dataset"
ARCH = "arch"  # the model family (nets/families); versions registered before it existed are "resnet"
DEPTH = "depth"
WIDTH = "width"
SEED = "seed"
DATA_FRACTION = "data_fraction"
EPOCHS = "epochs"
IMAGE_SIZE = "image_size"  # the side images were resized to in training, "0" for as stored (absent before it existed)
VERSION_CONFIG = (DATASET, DEPTH, WIDTH, SEED, DATA_FRACTION, EPOCHS)
TEST_ACCURACY = "test_accuracy"
TRAIN_ACCURACY = "train_accuracy"  # clean (no augmentation) accuracy on the training subset
VERSION_ACCURACY = (TEST_ACCURACY, TRAIN_ACCURACY)
TRAIN_SIZE = "train_size"
SUBSET_HASH = "subset_hash"
SKIPPED_IMAGES = "skipped_images"  # param: unreadable images left out of the data (WIDEDEEP_SKIP_BAD_IMAGES)
ANALYSIS_RUN_ID = "analysis_run_id"
TEST_LOGITS = "test_logits"  # + "." + the test set's digest (ImageData.test_digest): one cache per dataset
STUDY_ANALYSED = "study_analysis"  # the analysis settings' hash a study last analysed the version with
NEWEST_ALIAS = "newest"
DEGENERATE = "degenerate"  # version and train run: why the training is degenerate (near chance on its own training set)

# --- metrics: training ------------------------------------------------------------------------
TRAIN_LOSS = "train_loss"
TRAIN_BATCH_ACCURACY = "train_accuracy"  # on the augmented batches, per epoch (the version tag is the clean one)
LEARNING_RATE = "lr"
IMAGES_PER_SEC = "images_per_sec"  # of one model (in a pack, each model's; the pack's is K times more)
PACK_IMAGES_PER_SEC = "pack_images_per_sec"  # all the pack's models' images together
EPOCH_SECONDS = "epoch_seconds"
MFU = "mfu"  # model FLOP utilisation, on GPUs of known peak
TRAIN_PC1_SHARE = "train_pc1_share"
TRAIN_PC1_PENALTY = "train_pc1_penalty"
EPOCH = "epoch"


def score_loss(split: str) -> str:
    """The loss on the scored split: 'test_loss', or 'val_loss' in a hyperparameter search."""
    return f"{split}_loss"


def score_accuracy(split: str) -> str:
    return f"{split}_accuracy"


TEST_LOSS = score_loss("test")
VAL_ACCURACY = score_accuracy("val")
TRAIN_ACCURACY_CLEAN = "train_accuracy_clean"  # the final training accuracy without augmentation
TRAIN_LOSS_CLEAN = "train_loss_clean"
TRAINING_METRICS = (TRAIN_LOSS, TRAIN_BATCH_ACCURACY, LEARNING_RATE, IMAGES_PER_SEC, EPOCH_SECONDS, TEST_LOSS, TEST_ACCURACY)

# --- metrics: one model's analysis --------------------------------------------------------------
BLOCK_COUNT = "block_count"
BLOCK_LARGEST_FRAC = "block_largest_frac"
BLOCK_TOTAL_FRAC = "block_total_frac"
BLOCK_MEAN_CKA = "block_mean_cka"
BLOCK_METRICS = (BLOCK_COUNT, BLOCK_LARGEST_FRAC, BLOCK_TOTAL_FRAC, BLOCK_MEAN_CKA)
ANALYSIS_ACCURACY = "analysis_test_accuracy"
FITS_TRAINING_SET_METRIC = "fits_training_set"
PC1_SHARE_IN_BLOCK = "pc1_share_in_block"
PC1_SHARE_OUTSIDE = "pc1_share_outside"
BLOCK_MEAN_CKA_WITHOUT_PC1 = "block_mean_cka_without_pc1"
PROBE_GAIN_IN_BLOCK = "probe_gain_in_block"
DELETION_DROP_IN_BLOCK = "deletion_drop_in_block"
DELETION_DROP_OUTSIDE = "deletion_drop_outside"
DOMINANT_OVERLAP_IN_BLOCK = "dominant_overlap_in_block"
DOMINANT_OVERLAP_OUTSIDE = "dominant_overlap_outside"
DOMINANT_SHARE_IN_BLOCK = "dominant_share_in_block"
# The follow-up's causal test: the largest block's mean CKA recomputed without the blocks' dominant
# images, and without as many random ones (the control); and how many were removed.
BLOCK_MEAN_CKA_WITHOUT_DOMINANT = "block_mean_cka_without_dominant"
BLOCK_MEAN_CKA_WITHOUT_RANDOM = "block_mean_cka_without_random"
DOMINANT_REMOVED = "dominant_removed"
EXPLANATION_METRICS = (
    PC1_SHARE_IN_BLOCK, PC1_SHARE_OUTSIDE, BLOCK_MEAN_CKA_WITHOUT_PC1, PROBE_GAIN_IN_BLOCK, DELETION_DROP_IN_BLOCK,
    DELETION_DROP_OUTSIDE, DOMINANT_OVERLAP_IN_BLOCK, DOMINANT_OVERLAP_OUTSIDE, DOMINANT_SHARE_IN_BLOCK,
    BLOCK_MEAN_CKA_WITHOUT_DOMINANT, BLOCK_MEAN_CKA_WITHOUT_RANDOM, DOMINANT_REMOVED,
)  # fmt: skip
ANALYSIS_METRICS = (*BLOCK_METRICS, ANALYSIS_ACCURACY, *EXPLANATION_METRICS)
# Sanity of every analysis (science/sanity.py): the matrix before it is made exactly symmetric, a
# shuffled baseline, and with several seeds of one architecture, seed-to-seed identification.
SANITY_DIAGONAL_ERROR = "sanity/diagonal_error"  # max |CKA(l, l) - 1|
SANITY_ASYMMETRY = "sanity/asymmetry"  # max |CKA(a, b) - CKA(b, a)|
SANITY_RANGE_EXCESS = "sanity/range_excess"  # how far the largest |CKA| lies beyond 1 (0 when within)
SANITY_SHUFFLED_MAX = "sanity/shuffled_max_abs"  # max over layers of |CKA(layer, its own batch-permuted self)|
SANITY_SHUFFLED_MEAN = "sanity/shuffled_mean_abs"
SANITY_SEED_IDENTIFICATION = "sanity/seed_identification"  # share of layers matched to themselves in another seed
SANITY_METRICS = (SANITY_DIAGONAL_ERROR, SANITY_ASYMMETRY, SANITY_RANGE_EXCESS, SANITY_SHUFFLED_MAX, SANITY_SHUFFLED_MEAN)


def dominant_share_top(k: int) -> str:
    """The share of each layer's PC1 variance its top k examples hold, averaged over all layers."""
    return f"dominant_share_top{k}"


PC1_SHARE_MEAN = "pc1_share_mean"  # history only: over every layer of a snapshot
PC1_SHARE_MAX = "pc1_share_max"


def history_metric(name: str) -> str:
    """A snapshot's metric, logged at step = epoch in the model's analysis run."""
    return f"{HISTORY_DIR}/{name}"


# --- metrics: across models -------------------------------------------------------------------
SAME_LAYER_CKA_IN_BLOCK = "same_layer_cka_in_block"  # two seeds: CKA of each layer with itself, in A's block
SAME_LAYER_CKA_OUTSIDE = "same_layer_cka_outside"
DOMINANT_OVERLAP_ACROSS_SEEDS_IN_BLOCK = "dominant_overlap_across_seeds_in_block"
DOMINANT_OVERLAP_ACROSS_SEEDS_OUTSIDE = "dominant_overlap_across_seeds_outside"
CROSS_DISAGREEMENT = "cross_disagreement"
WITHIN_DISAGREEMENT = "within_disagreement"
CROSS_VS_WITHIN_DISAGREEMENT = "cross_vs_within_disagreement"
DISAGREEMENT_P_VALUE = "disagreement_p_value"
N_SIGNIFICANT_CLASSES = "n_significant_classes"
PREDICTION_METRICS = (CROSS_DISAGREEMENT, WITHIN_DISAGREEMENT, CROSS_VS_WITHIN_DISAGREEMENT, DISAGREEMENT_P_VALUE,
                      N_SIGNIFICANT_CLASSES)

# --- artifacts: one model's analysis, under CKA_DIR -----------------------------------------------
CKA_DIR = "cka"
MATRIX = "cka"  # cka.npy and cka.csv (layer names on both axes)
MATRIX_FILE = f"{MATRIX}.npy"
MATRIX_WITHOUT_PC1 = "cka_without_pc1"  # .npy and .csv
MATRIX_PC1_ONLY = "cka_pc1_only"
SUMMARY_FILE = "summary.json"  # store/summary.py
HEATMAP = "heatmap"
HEATMAP_FILE = f"{HEATMAP}.png"
HEATMAP_WITHOUT_PC1_FILE = "heatmap_without_pc1.png"
PC1_SHARE_FILE = "pc1_share.png"
PROBES_FILE = "probes.png"
DELETION_FILE = "deletion.png"
DOMINANT_DIR = "dominant"  # under CKA_DIR
MEASURES_DIR = "measures"  # under CKA_DIR (and each cross dir): <measure>.npy and <measure>.png of measures besides linear CKA
DOMINANT_OVERLAP = "overlap"  # .npy and .png
DOMINANT_SHARES_FILE = "shares.npy"  # layers x examples
DOMINANT_TOP_FILE = "top.csv"
DOMINANT_STATISTICS_FILE = "statistics.csv"
MATRIX_WITHOUT_DOMINANT = "cka_without_dominant"  # .npy and .csv, under DOMINANT_DIR
MATRIX_WITHOUT_RANDOM = "cka_without_random"
HEATMAP_WITHOUT_DOMINANT_FILE = "heatmap_without_dominant.png"  # the two side by side


def dominant_grid_file(group_label: str) -> str:
    """The image grid of a group of layers' dominant images ('block 40-79' -> 'block-40-79.png')."""
    return f"{group_label.replace(' ', '-')}.png"


MODEL_FIGURES = (HEATMAP_FILE, HEATMAP_WITHOUT_PC1_FILE, PC1_SHARE_FILE, PROBES_FILE, DELETION_FILE,
                 f"{DOMINANT_DIR}/{DOMINANT_OVERLAP}.png",
                 f"{DOMINANT_DIR}/{HEATMAP_WITHOUT_DOMINANT_FILE}")  # with every analysis chosen (and a block)

# --- artifacts: history (a model's training snapshots), other stages ---------------------------------
HISTORY_DIR = "history"
HISTORY_HEATMAPS_FILE = "heatmaps.png"
HISTORY_METRICS_FILE = "metrics.png"


def history_matrix_file(epoch: int) -> str:
    return f"epoch-{epoch:04d}.npy"


SNAPSHOT_DIR = "snapshots"  # train runs: weights every snapshot_every epochs
HISTORY_SKIPPED = "history.skipped_epochs"  # a model's analysis run: the snapshots it could not analyse (missing, unreadable)


def snapshot_file(epoch: int) -> str:
    return f"epoch-{epoch:04d}.safetensors"


CROSS_DIR = "cross"
LOGITS_DIR = "logits"
COMPARISON_DIR = "comparison"
COMPARISON_MODELS_FILE = "models.csv"
COMPARISON_TABLE = "table"  # .csv and .md


def trend_file(x: str) -> str:
    """Block size against `x` (width or depth)."""
    return f"block_vs_{x}.png"


def heatmap_grid_file(fraction_text: str) -> str:
    """The grid of heatmaps (rows depth, columns width) of one data fraction, written as in tags."""
    return f"heatmaps_fraction_{fraction_text}.png"


PREDICTIONS_DIR = "predictions"
PREDICTIONS_FIGURES = ("per_example.png", "per_class.png", "agreement.png")
PREDICTIONS_TABLES = ("accuracy.csv", "agreement.csv", "per_class.csv", "per_example.csv")
REPORT_DIR = "report"
REPORT_FILE = "report.html"
MODEL_CONFIG_FILE = "config.json"
MODEL_WEIGHTS_FILE = "model.safetensors"


def model_uri(name: str, version: str | int) -> str:
    return f"models:/{name}/{version}"


def cross_dir(label_a: str, label_b: str) -> str:
    """Where the group's run keeps the cross-model CKA of two models (A on the y axis)."""
    return f"{CROSS_DIR}/{label_a}__vs__{label_b}"


def test_logits_tag(test_digest: str, fed: dict[str, str] | None = None) -> str:
    """The version tag that points at its cached logits on the test set of this digest; for a
    model from outside the project, also keyed by the input it was `fed` (size, crop, mean, std),
    since its source's keys can change that."""
    if not fed:
        return f"{TEST_LOGITS}.{test_digest}"
    return f"{TEST_LOGITS}.{test_digest}.{hashlib.sha256(json.dumps(fed, sort_keys=True).encode()).hexdigest()[:12]}"


def logits_artifact(run_id: str, label: str) -> str:
    """The runs:/ URI of a model's cached test logits, logged by the predictions run `run_id`."""
    return f"runs:/{run_id}/{LOGITS_DIR}/{label}.npy"
