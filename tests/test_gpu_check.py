"""The GPU check's dry run: benchmarks/gpu_check.sh --dry-run runs every step of the real check on
the CPU with tiny sizes, so the script cannot rot between the rare runs on a GPU."""

import re
import subprocess

import pytest

from tests.conftest import REPO, subprocess_env


@pytest.mark.slow
def test_the_gpu_check_dry_run_completes_every_section(tmp_path, tiny_data, cache_root):
    out = tmp_path / "gpu-results.md"
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=REPO, capture_output=True,
                          text=True, timeout=900, env=subprocess_env(GPU_CHECK_OUT=str(out), WIDEDEEP_DATA_DIR=str(tiny_data),
                                                                    WIDEDEEP_CACHE_DIR=str(cache_root)))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    text = out.read_text()
    assert "device cpu: none (CPU dry run)" in text
    sections = re.findall(r"^## (\w)\. ", text, re.M)
    assert sections == ["a", "b", "c", "d"]
    assert re.search(r"\d+ passed", text) and "failed" not in text  # the cuda tests, on the CPU
    assert "bf16 autocast (cpu)" in text and "widedeep" in text and "pytorch-cka" in text
    assert re.search(r"ResNet-8 w0.5 .*\d", text)  # the training benchmark's row
    assert re.search(r"ResNet-8 w0.5 +3 +[\d.]+ +[\d.]+ +[\d.]+x", text)  # a pack of 3 against one alone
    assert "block_largest_frac" in text  # the study's per-model numbers
