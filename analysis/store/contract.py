"""The tracking-store contract: every tag key, metric name and artifact path this project writes
or reads, spelled once. Writers (stages) and readers (queries, results, report, tests) import
these names, so a renamed key is an AttributeError, not an empty column.

Runs. Every run is tagged with its KIND and the process doing it (PROCESS_HOST, PROCESS_PID);
a failed run carries ERROR, the one-line message the user saw.
- train runs: LINEAGE, FINGERPRINT, RESUMED_FROM (when resumed), REGISTERED_MODEL + MODEL_VERSION;
- analyze runs, one per model (nested under the group's run when several are analysed together):
  ANALYSIS_MODEL_URI, MODEL_NAME, MODEL_VERSION, TRAIN_RUN_ID, the version's config tags, metrics
  BLOCK_METRICS + EXPLANATION_METRICS, artifacts under CKA_DIR; the group's run holds
  ANALYSIS_MODELS and the cross-model matrices under cross_dir(a, b);
- compare runs: COMPARISON_DIR; predictions runs: GROUP_A, GROUP_B, LOGITS_DIR, PREDICTIONS_DIR;
- sweep runs: SWEEP_* tags; study runs: STUDY_PRESET and the report under REPORT_DIR.
Model versions: the config tags VERSION_CONFIG, VERSION_ACCURACY, provenance, the analysis
metrics with ANALYSIS_RUN_ID, TEST_LOGITS (a runs:/ URI of cached logits) and STUDY_ANALYSED.
"""

from __future__ import annotations

__all__ = [
    "KIND", "KINDS", "PROCESS_HOST", "PROCESS_PID", "ERROR", "LINEAGE", "FINGERPRINT", "RESUMED_FROM", "REGISTERED_MODEL",
    "MODEL_NAME", "MODEL_VERSION", "TRAIN_RUN_ID", "ANALYSIS_MODEL_URI", "ANALYSIS_MODELS", "GROUP_A", "GROUP_B",
    "SWEEP_STUDY", "SWEEP_STORAGE", "SWEEP_MODE", "SWEEP_GRID_SIZE", "SWEEP_TRIAL", "STUDY_PRESET",
    "VERSION_CONFIG", "VERSION_ACCURACY", "TEST_ACCURACY", "TRAIN_ACCURACY", "TRAIN_SIZE", "ARCH", "IMAGE_SIZE", "SUBSET_HASH", "SKIPPED_IMAGES", "EPOCHS",
    "ANALYSIS_RUN_ID", "TEST_LOGITS", "STUDY_ANALYSED", "NEWEST_ALIAS",
    "BLOCK_METRICS", "EXPLANATION_METRICS", "ANALYSIS_ACCURACY", "FITS_TRAINING_SET_METRIC", "ANALYSIS_METRICS",
    "CKA_DIR", "DOMINANT_DIR", "HISTORY_DIR", "SNAPSHOT_DIR", "MATRIX_FILE", "SUMMARY_FILE", "HEATMAP_FILE", "CROSS_DIR", "LOGITS_DIR", "COMPARISON_DIR",
    "PREDICTIONS_DIR", "REPORT_DIR", "MODEL_CONFIG_FILE", "MODEL_WEIGHTS_FILE",
    "model_uri", "cross_dir", "logits_artifact",
]  # fmt: skip

# --- run tags ---------------------------------------------------------------------------------
KIND = "widedeep.kind"
KINDS = ("train", "analyze", "compare", "predictions", "sweep", "search", "study")
PROCESS_HOST = "process.host"
PROCESS_PID = "process.pid"
ERROR = "error"
LINEAGE = "lineage"  # one id per training, kept across resumes
FINGERPRINT = "fingerprint"  # config + store + experiment: the identity sweeps skip on
RESUMED_FROM = "resumed_from_run"
REGISTERED_MODEL = "registered_model"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
TRAIN_RUN_ID = "train_run_id"
ANALYSIS_MODEL_URI = "analysis.model_uri"
ANALYSIS_MODELS = "analysis.models"
GROUP_A = "group_a"
GROUP_B = "group_b"
SWEEP_STUDY = "sweep.study"
SWEEP_STORAGE = "sweep.storage"
SWEEP_MODE = "sweep.mode"
SWEEP_GRID_SIZE = "sweep.grid_size"
SWEEP_TRIAL = "sweep.trial"
STUDY_PRESET = "study.preset"

# --- model version tags -----------------------------------------------------------------------
VERSION_CONFIG = ("dataset", "depth", "width", "seed", "data_fraction", "epochs")
TEST_ACCURACY = "test_accuracy"
TRAIN_ACCURACY = "train_accuracy"  # clean (no augmentation) accuracy on the training subset
VERSION_ACCURACY = (TEST_ACCURACY, TRAIN_ACCURACY)
TRAIN_SIZE = "train_size"
ARCH = "arch"  # the model family (nets.ARCHS); versions registered before it existed are "resnet"
IMAGE_SIZE = "image_size"  # the side images were resized to in training, "0" for as stored (absent before it existed)
SUBSET_HASH = "subset_hash"
SKIPPED_IMAGES = "skipped_images"  # param: unreadable images left out of the data (WIDEDEEP_SKIP_BAD_IMAGES)
EPOCHS = "epochs"
ANALYSIS_RUN_ID = "analysis_run_id"
TEST_LOGITS = "test_logits"
STUDY_ANALYSED = "study_analysis"  # the analysis settings' hash a study last analysed the version with
NEWEST_ALIAS = "newest"

# --- metrics ----------------------------------------------------------------------------------
BLOCK_METRICS = ("block_count", "block_largest_frac", "block_total_frac", "block_mean_cka")
ANALYSIS_ACCURACY = "analysis_test_accuracy"
FITS_TRAINING_SET_METRIC = "fits_training_set"
EXPLANATION_METRICS = (
    "pc1_share_in_block", "pc1_share_outside", "block_mean_cka_without_pc1", "probe_gain_in_block",
    "deletion_drop_in_block", "deletion_drop_outside", "dominant_overlap_in_block", "dominant_overlap_outside",
    "dominant_share_in_block",
)  # fmt: skip
ANALYSIS_METRICS = (*BLOCK_METRICS, ANALYSIS_ACCURACY, *EXPLANATION_METRICS)

# --- artifacts --------------------------------------------------------------------------------
CKA_DIR = "cka"  # per-model analysis: cka.npy/.csv, summary.json, heatmap*.png, pc1_share.png, ...
DOMINANT_DIR = "dominant"  # under CKA_DIR: overlap, shares, top examples, image grids, statistics
HISTORY_DIR = "history"  # per-model analysis of the training snapshots: heatmap strip, matrices
SNAPSHOT_DIR = "snapshots"  # train runs: weights every snapshot_every epochs, epoch-0000.safetensors, ...
MATRIX_FILE = "cka.npy"
SUMMARY_FILE = "summary.json"
HEATMAP_FILE = "heatmap.png"
CROSS_DIR = "cross"
LOGITS_DIR = "logits"
COMPARISON_DIR = "comparison"
PREDICTIONS_DIR = "predictions"
REPORT_DIR = "report"
MODEL_CONFIG_FILE = "config.json"
MODEL_WEIGHTS_FILE = "model.safetensors"


def model_uri(name: str, version: str | int) -> str:
    return f"models:/{name}/{version}"


def cross_dir(label_a: str, label_b: str) -> str:
    """Where the group's run keeps the cross-model CKA of two models (A on the y axis)."""
    return f"{CROSS_DIR}/{label_a}__vs__{label_b}"


def logits_artifact(run_id: str, label: str) -> str:
    """The runs:/ URI of a model's cached test logits, logged by the predictions run `run_id`."""
    return f"runs:/{run_id}/{LOGITS_DIR}/{label}.npy"
