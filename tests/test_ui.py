"""What a researcher sees in MLflow's own UI, in a real browser: `mlflow server` over a store with
one trained and analysed tiny model, its pages rendered by headless Chromium (.ci/run installs
Debian's `chromium` where it is missing)."""

import os
import re
import shutil
import subprocess

import mlflow
import pytest

from entrypoints import analyze as analyze_entry
from entrypoints import train as train_entry
from entrypoints.common import run_main
from tests.conftest import mlflow_server
from tests.fake_store import runs_of

pytestmark = [pytest.mark.slow, pytest.mark.ui]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rendered(url: str) -> str:
    """The page's DOM once its scripts have run (MLflow's UI is a single-page app)."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing; .ci/run installs Debian's chromium")
        pytest.skip("no chromium on this machine")
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--disable-background-networking", "--no-first-run", "--virtual-time-budget=30000",
                           "--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def text_of(page: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", page, flags=re.S)))


@pytest.fixture
def server(store):
    """A trained and analysed tiny model in the test's store, served by `mlflow server`."""
    assert run_main(lambda: train_entry.main(train_entry.parse_args(
        ["--depth", "8", "--width", "0.25", "--epochs", "1", "--batch_size", "50", "--device", "cpu"]))) == 0
    assert run_main(lambda: analyze_entry.main(analyze_entry.parse_args(
        ["--models", "models:/cifar10-resnet8-w0.25/1", "--num_examples", "40", "--batch_size", "20", "--passes", "1",
         "--device", "cpu"]))) == 0
    with mlflow_server(os.environ["MLFLOW_TRACKING_URI"], store) as url:
        yield url


def test_the_analysis_heatmap_and_the_version_signature_show_in_the_ui(server):
    (analysis,) = [r for r in runs_of("analyze") if "analysis.model_uri" in r.data.tags]
    page = rendered(f"{server}/#/experiments/{analysis.info.experiment_id}/runs/{analysis.info.run_id}/artifacts/cka/heatmap.png")
    assert re.search(r'<img[^>]*alt="cka/heatmap.png"[^>]*src="blob:', page), "the heatmap is not displayed"

    version = text_of(rendered(f"{server}/#/models/cifar10-resnet8-w0.25/versions/1"))
    assert "Outputs (1)" in version  # the signature: logits out (the input is checked by the model, not declared)
    assert "block_largest_frac" in version and "train_run_id" in version  # the tags the analysis set
    assert "Block structure:" in version  # the version's description answers the paper's question

    # The version's LoggedModel page shows the analysis's block metrics beside the training's,
    # measured on the analysed examples.
    model_id = mlflow.models.get_model_info("models:/cifar10-resnet8-w0.25/1").model_id
    logged = text_of(rendered(f"{server}/#/experiments/{analysis.info.experiment_id}/models/{model_id}"))
    assert "block_count" in logged and "block_largest_frac" in logged and "test_accuracy" in logged
    assert "cifar10-test-n40" in logged
    mlflow.set_tracking_uri(None)
