"""Every bad input tried against the entry points, and the one line a user gets for it.

Each row runs the entry point as `mlflow run` would run it (parse, check, work), on a tracking
store and an Optuna storage that do not exist yet. A bad value must fail with exit status 2 and one
line on stderr that names the parameter, before any work: no store or study is created, no data is
decoded, and no folder the user named is created. Rows marked `store` need a registry to look up,
and run on an existing, empty store instead.

docs/bad-inputs.md is this table with the messages as they are today; regenerate it with
`python -m tests.test_bad_inputs` (a test fails when it drifts).
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import sys
from pathlib import Path

import mlflow
import pytest

from entrypoints.common import run_main
from tests.conftest import REPO

DOC = REPO / "docs" / "bad-inputs.md"
REGENERATE_ENV = "WIDEDEEP_REGENERATE_DOCS"

# (entry point, arguments, a fragment the message must hold, needs an existing store)
ROWS: list[tuple[str, str, str, bool]] = [
    ("train", "--depth abc", "parameter depth: invalid integer value: 'abc'", False),
    ("train", "--depth 8.5", "depth: invalid integer value: '8.5' (give a whole number)", False),
    ("train", "--depth 9", "depth=9 is not 6n+2", False),
    ("train", "--width inf", "width: invalid number: 'inf' (give a finite number)", False),
    ("train", "--width nan", "width: invalid number: 'nan'", False),
    ("train", "--width 0", "width=0.0 must be a positive multiplier", False),
    ("train", "--width 1e6", "width=1000000.0 must be a positive multiplier below 10,000", False),
    ("train", "--data_fraction 0", "data_fraction=0.0 is not allowed; use in (0, 1]", False),
    ("train", "--data_fraction 1.5", "data_fraction=1.5 is not allowed", False),
    ("train", "--epochs -1", "epochs=-1 is not allowed; use an integer >= 1, or 0 for the preset's count", False),
    ("train", "--epochs 2.5", "epochs: invalid integer value: '2.5'", False),
    ("train", "--batch_size 1", "batch_size=1 is not allowed; use an integer >= 2", False),
    ("train", "--lr 0", "lr=0.0 is not allowed; use a positive float", False),
    ("train", "--lr inf", "lr: invalid number: 'inf'", False),
    ("train", "--momentum 1", "momentum=1.0 is not allowed; use in [0, 1)", False),
    ("train", "--weight_decay -1", "weight_decay=-1.0 is not allowed", False),
    ("train", "--eval_every 0", "eval_every=0 is not allowed", False),
    ("train", "--dataset mnist", "dataset='mnist' is not allowed; use one of cifar10, cifar100, imagefolder, imagenet", False),
    ("train", "--device tpu", "device='tpu' is not allowed; use one of auto, cpu, cuda", False),
    ("train", "--preset huge", "parameter preset: invalid choice: 'huge'", False),
    ("train", "--compile maybe", "parameter compile: invalid choice: 'maybe'", False),
    ("train", "--data_dir {tmp}/nowhere", "data_dir='{tmp}/nowhere' does not exist", False),
    ("train", "--arch vgg", "arch='vgg' is unknown; use one of resnet, resnet50", False),
    ("train", "--dataset imagenet --arch resnet", "dataset='imagenet' is not allowed; use imagenet with arch=resnet50", False),
    ("train", "--nproc 0", "nproc=0 is not allowed; use an integer >= 1", False),
    ("train", "--nproc 3", "batch_size=128 is not allowed; use a multiple of nproc=3", False),
    ("train", "--arch resnet50 --depth 52", "depth=52 is not 50+3k", False),
    ("train", "--image_size 4", "image_size=4 is not allowed; use 0 (as stored) or an integer >= 8", False),
    ("train", "--seeds 3", "seeds='3' is not allowed; use two or more seeds", False),
    ("train", "--seeds 0,1 --seed 2", "seed=2 is not allowed; use 0 with seeds=0,1", False),
    ("train", "--seeds 0,1 --nproc 2", "nproc=2 is not allowed; use 1 with seeds", False),
    ("train", "--seeds 0,-1", "seeds='0,-1' is not allowed; use whole numbers >= 0", False),
    ("train", "--snapshot_every -1", "snapshot_every=-1 is not allowed; use an integer >= 0", False),
    ("train", "--pc1_penalty -0.5", "pc1_penalty=-0.5 is not allowed; use a float >= 0", False),
    ("train", "--pc1_penalty 0.1 --pc1_penalty_layers stage4", "pc1_penalty_layers='stage4' names no residual block output", False),
    ("analyze", "", "no models given", False),
    ("analyze", "--models models:/m/1 --batch_size 3", "batch_size=3 is not allowed; use an integer >= 4", False),
    ("analyze", "--models models:/m/1 --num_examples 2", "num_examples=2 is not allowed; use 0 or an integer >= 4", False),
    ("analyze", "--models models:/m/1 --num_examples -5", "num_examples=-5 is not allowed", False),
    ("analyze", "--models models:/m/1 --passes 0", "passes=0 is not allowed; use an integer >= 1", False),
    ("analyze", "--models models:/m/1 --analyses pca", "analyses='cka,pca' has unknown names ['pca']", False),
    ("analyze", "--models models:/m/1 --layers ,", "layers=',' is not allowed; use one of all, blocks, list, or a comma list of name patterns", False),
    ("analyze", "--models models:/m/1 --precision fp8", "parameter precision: invalid choice: 'fp8'", False),
    ("analyze", "--models models:/m/1 --pc_iterations 0", "pc_iterations=0 is not allowed", False),
    ("analyze", "--models models:/m/1 --analyses dominant --dominant_top 0", "dominant_top=0 is not allowed", False),
    ("analyze", "--models models:/m/1 --history yes", "parameter history: invalid choice: 'yes'", False),
    ("analyze", "--models models:/m/1 --probe_examples -1", "probe_examples=-1 is not allowed", False),
    ("analyze", "--models models:/m/1 --probe_pool 0", "probe_pool=0 is not allowed", False),
    ("analyze", "--models models:/m/1 --probe_train all", "probe_train='all' is not allowed; use one of subset, full, both", False),
    ("analyze", "--models models:/m/1 --device tpu", "device='tpu' is not one of auto, cpu, cuda", False),
    ("analyze", "--models models:/m/1 --dataset mnist", "dataset='mnist' is not allowed", False),
    ("analyze", "--models models:/m/1 --data_dir {tmp}/nowhere", "data_dir='{tmp}/nowhere' does not exist", False),
    ("analyze", "--models models:/m/1 --measures cosine", "measures='cosine' has unknown names ['cosine']; use a comma list of linear_cka", False),
    ("analyze", "--models models:/m/1 --rbf_fraction 0", "rbf_fraction=0.0 is not allowed; use a positive fraction", False),
    ("analyze", "--models models:/m/1 --measures mutual_knn --knn_k 256", "knn_k=256 is not allowed; use an integer >= 1 and below the batch size", False),
    ("analyze", "--models cifar10-resnet20-w1", "is not a registry URI or a source this tool reads; write models:/NAME/VERSION", True),
    ("analyze", "--models models:/nothing/1", "model 'models:/nothing/1' is not in the registry", True),
    ("analyze", "--models python:torchvision.models:resnet18 --dataset cifar10", "declares no input_size or mean or std; add them", True),
    ("analyze", "--models torchvision:resnet18?input_size=32", "none of the models records the dataset it was trained on", True),
    ("analyze", "--search name=", "registry filter 'name=' is not valid", True),
    ("analyze", "--search \"name='nothing'\"", "search=\"name='nothing'\" matches no registered model version", True),
    ("sweep", "--workers 0", "workers=0 is not allowed; use an integer >= 1", False),
    ("sweep", "--pack 0", "pack=0 is not allowed; use auto or an integer >= 1", False),
    ("sweep", "--pack two", "parameter pack: invalid integer value: 'two'", False),
    ("sweep", "--mode search --n_trials 0", "n_trials=0 is not allowed; use an integer >= 1", False),
    ("sweep", "--mode search --val_fraction 1", "val_fraction=1.0 is not allowed; use a share in (0, 1)", False),
    ("sweep", "--mode bogus", "parameter mode: invalid choice: 'bogus'", False),
    ("sweep", "--depths 8,9", "depth=9 is not 6n+2", False),
    ("sweep", "--arch resnet50 --depths 50,52", "depth=52 is not 50+3k", False),
    ("sweep", "--widths 1,abc", "widths='1,abc' is not a comma-separated list of floats", False),
    ("sweep", "--widths 1,inf", "width=inf must be a positive multiplier", False),
    ("sweep", "--seeds ,", "seeds is empty; give at least one value", False),
    ("sweep", "--data_fractions 0.5,2", "data_fraction=2.0 is not allowed", False),
    ("sweep", "--epochs -3", "epochs=-3 is not allowed", False),
    ("compare", "--data_fraction abc", "data_fraction='abc' is not a number", False),
    ("compare", "--min_epochs -1", "min_epochs=-1 is not allowed; use an integer >= 0", False),
    ("compare", "--source xml", "parameter source: invalid choice: 'xml'", False),
    ("predictions", "", "the following arguments are required: --group_a, --group_b", False),
    ("predictions", "--group_a x --group_b y --alpha 2", "alpha=2.0 is not allowed; use a false discovery rate in (0, 1)", False),
    ("predictions", "--group_a x --group_b y --permutations 0", "permutations=0 is not allowed; use an integer >= 1", False),
    ("predictions", "--group_a ' ' --group_b y", "group_a is empty", False),
    ("predictions", "--group_a x --group_b y --device tpu", "device='tpu' is not one of auto, cpu, cuda", False),
    ("predictions", "--group_a name= --group_b \"name='b'\"", "registry filter 'name=' is not valid", True),
    ("predictions", "--group_a torchvision:resnet18?num_classes=10&input_size=32 --group_b "
     "torchvision:resnet18?num_classes=10&input_size=32&init_seed=1", "name the images to read with -P dataset=", True),
    ("study", "--preset huge", "preset='huge' is unknown; use one of smoke, cpu, gpu, paper", False),
    ("study", "--device tpu", "device='tpu' is not one of auto, cpu, cuda", False),
    ("study", "--dataset mnist", "dataset='mnist' is not allowed", False),
    ("study", "--data_dir {tmp}/nowhere", "data_dir='{tmp}/nowhere' does not exist", False),
]


def run_row(entry: str, args: str, tmp: Path, capsys) -> tuple[int, str]:
    """Run one entry point in this process as `python -m entrypoints.<entry> args` would."""
    import shlex

    module = importlib.import_module(f"entrypoints.{entry}")
    argv = shlex.split(args.replace("{tmp}", str(tmp)))
    code = run_main(lambda: module.main(module.parse_args(argv)))
    return code, capsys.readouterr().err


def nothing_yet(tmp: Path, monkeypatch, tiny_data: Path, store_template: Path, needs_store: bool) -> None:
    """Work in `tmp`: a tracking store and an Optuna storage there that do not exist yet (or an
    empty store, for rows that look models up), an empty cache, the tiny data set."""
    tmp.mkdir(exist_ok=True)
    if needs_store:
        shutil.copy(store_template, tmp / "mlflow.db")
    monkeypatch.chdir(tmp)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("WIDEDEEP_OPTUNA_STORAGE", f"sqlite:///{tmp / 'optuna.db'}")
    monkeypatch.setenv("WIDEDEEP_DATA_DIR", str(tiny_data))
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(tmp / "cache"))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(uri)


@pytest.fixture(autouse=True)
def _reset_tracking():
    yield
    mlflow.set_tracking_uri(None)


@pytest.mark.parametrize("entry,args,fragment,needs_store", ROWS, ids=[f"{r[0]} {r[1]}" for r in ROWS])
def test_a_bad_input_fails_in_one_line_before_any_work(entry, args, fragment, needs_store, tmp_path, monkeypatch, tiny_data,
                                                       store_template, capsys):
    tmp = tmp_path / "work"
    nothing_yet(tmp, monkeypatch, tiny_data, store_template, needs_store)
    code, err = run_row(entry, args, tmp, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert fragment.replace("{tmp}", str(tmp)) in err
    assert "Traceback" not in err
    assert (tmp / "mlflow.db").exists() == needs_store  # no store created
    assert not (tmp / "optuna.db").exists()  # no study created
    assert not (tmp / "cache").exists()  # no data decoded, no checkpoint written
    assert not (tmp / "nowhere").exists()  # a named folder is never created


def test_the_table_of_bad_inputs_in_docs_is_current(tmp_path, monkeypatch, tiny_data, store_template, capsys):
    """docs/bad-inputs.md lists every row with the message it gives today."""
    text = render(tmp_path, monkeypatch, tiny_data, store_template, capsys)
    if os.environ.get(REGENERATE_ENV):
        DOC.write_text(text)
    assert DOC.read_text() == text


# Bad files, models, payloads and machines met during the work, each refused or handled by the test
# named (file::function); the table in docs/bad-inputs.md lists them with what a user sees.
BAD_FILES: list[tuple[str, str, str]] = [
    ("an MLflow pytorch model in the pickle format, where MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false",
     "model 'models:/NAME/1?...' is saved in MLflow's pickle format, and loading it runs code from the file; MLflow forbids "
     "that here (MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false): set MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true if you trust it, "
     "or re-log it with mlflow.pytorch.log_model(..., serialization_format='pt2')",
     "test_sources.py::test_a_pickle_model_loads_only_where_mlflow_allows_pickle"),
    ("an image over the pixel limit (a 20,000 x 20,000 JPEG of 6 MB)",
     "image '<file>' is 20000 x 20000 pixels, more than the limit of 89,478,485 (WIDEDEEP_MAX_IMAGE_PIXELS); shrink or "
     "remove it, or raise the limit with WIDEDEEP_MAX_IMAGE_PIXELS=N",
     "test_data.py::test_an_image_over_the_pixel_limit_is_refused_from_its_header"),
    ("a data folder of one class", "<folder>/train has 1 class folder (cat); a classifier needs two or more, one folder of "
     "images per class under train/ and test/", "test_data.py::test_a_folder_of_one_class_is_refused_before_any_image_is_read"),
    ("another test folder of the same size and classes (`predictions -P data_dir=`)",
     "scored anew: cached logits are keyed by the test set's digest",
     "test_stage_predictions.py::test_another_test_folder_of_the_same_size_and_classes_is_scored_with_its_own_logits"),
    ("a tampered config.json (width 9999, num_classes 1e9, depth 6,000,002)",
     "models:/NAME/1: weights do not match the config ... (stem.conv.weight: the config needs (159984, 3, 3, 3) "
     "torch.float32, model.safetensors holds (4, 3, 3, 3) torch.float32; 46 tensor(s) differ); re-register the model "
     "with `train`", "test_model_files.py::test_a_tampered_config_is_refused_from_the_weights_header_before_anything_is_allocated"),
    ("a missing and a truncated training snapshot (`analyze -P history=true`)",
     "warning: models:/NAME/1: history leaves out epoch(s) 2, 3 (epoch 2: snapshots/ of its training run lacks it); the "
     "other 2 were analysed, and the run's tag history.skipped_epochs names the epochs left out; retrain ...",
     "test_beyond.py::test_history_names_a_missing_and_a_corrupt_snapshot_and_analyses_the_others"),
    ("a training left at chance (`pc1_penalty=1e9`)",
     "warning: cifar10-resnet8-w0.25 (seed 0) fits 10.0% of its training set, under 1.5 x chance (15.0%); "
     "pc1_penalty=1e+09 may be too strong; it is registered with the version tag degenerate holding this reason ...",
     "test_stage_train.py::test_a_training_left_at_chance_is_registered_tagged_degenerate_with_a_warning"),
    ("a model name holding `$` (`$x^$`, `a$b$c`)", "drawn as the text it is", "test_report.py::test_names_with_dollar_signs_are_drawn_as_text_not_math"),
    ("a served payload of floats in [0, 1] (and above 255, negative, channels last, another size, empty)",
     "HTTP 400: floating-point values in [0, 1] were sent (images scaled to [0, 1]? send the stored uint8 values); "
     "expected uint8 images (N, 3, 32, 32), channels first, integer pixel values 0 to 255 as stored (not floats in [0, 1])",
     "test_model_files.py::test_the_server_answers_images_with_the_registry_models_logits_and_refuses_every_wrong_payload_with_a_400"),
    ("a full disk at a checkpoint", "cannot write training checkpoints under <cache>/checkpoints (no space left on the "
     "device); the previous checkpoint is kept: free space or set WIDEDEEP_CACHE_DIR to another disk, then rerun the same "
     "command to resume", "test_stage_train.py::test_a_full_disk_at_a_checkpoint_stops_in_one_line_keeps_the_previous_one_and_a_rerun_resumes"),
    ("a killed or terminated `train -P nproc=2` launcher, rerun at once",
     "no rank outlives it; the rerun waits for them, resumes, and registers one version",
     "test_distributed.py::test_the_launcher_owns_its_ranks_when_terminated_or_killed_and_a_rerun_at_once_registers_once"),
]


def test_every_bad_file_row_names_a_test_that_exists():
    for _, _, where in BAD_FILES:
        file, function = where.split("::")
        assert f"def {function}(" in (REPO / "tests" / file).read_text(), where


def render(tmp_path: Path, monkeypatch, tiny_data: Path, store_template: Path, capsys) -> str:
    lines = [
        "# Bad inputs and what a user sees",
        "",
        "Every row is a test (`tests/test_bad_inputs.py`): the entry point, given these arguments (as",
        "`-P name=value` through `mlflow run`), fails with exit status 2 and this one line, before it",
        "touches data, the tracking store or a study (rows marked *registry* look models up in an",
        "existing store). Under `mlflow run` the run ends FAILED with the line as its `error` tag.",
        "Regenerate with `python -m tests.test_bad_inputs`.",
        "",
        "| entry point | arguments | message |",
        "| --- | --- | --- |",
    ]
    for i, (entry, args, _, needs_store) in enumerate(ROWS):
        tmp = tmp_path / f"row{i}"  # a store per row: MLflow keeps one engine per URI in the process
        nothing_yet(tmp, monkeypatch, tiny_data, store_template, needs_store)
        _, err = run_row(entry, args, tmp, capsys)
        message = err.strip().removeprefix("error: ").replace(str(tmp), "/tmp/x").replace("|", "\\|")
        shown = re.sub(r"--(\w+) ", r"\1=", args.replace("{tmp}", "/tmp/x")) or "(none)"
        lines.append(f"| {entry} | `{shown}`{' (registry)' if needs_store else ''} | {message} |")
    lines += ["", "## Bad files, models, payloads and disks", "",
              "Met during the work rather than in the parameters; each row is the test named (under `tests/`).", "",
              "| what | what a user sees | test |", "| --- | --- | --- |"]
    lines += [f"| {what} | {seen.replace('|', chr(92) + '|')} | `{where}` |" for what, seen, where in BAD_FILES]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # regenerate docs/bad-inputs.md
    os.environ[REGENERATE_ENV] = "1"
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", f"{__file__}::test_the_table_of_bad_inputs_in_docs_is_current"]))


def test_an_unreachable_tracking_store_is_one_line(tmp_path, monkeypatch, tiny_data, store_template, capsys):
    nothing_yet(tmp_path / "work", monkeypatch, tiny_data, store_template, False)
    unreachable = "postgresql+psycopg2://postgres@127.0.0.1:9/none"  # nothing listens on port 9
    monkeypatch.setenv("MLFLOW_TRACKING_URI", unreachable)
    mlflow.set_tracking_uri(unreachable)
    code, err = run_row("train", "--depth 8 --width 0.25 --epochs 1 --batch_size 50 --device cpu", tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert "127.0.0.1" in err and "9" in err
    assert not (tmp_path / "work" / "cache").exists()  # failed before any data was read
