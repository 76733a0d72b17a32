"""The Python API as the README shows it: reachable from `import analysis` alone, which stays cheap."""

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow  # fresh interpreters
def test_import_analysis_exposes_the_api_and_version_and_loads_torch_only_when_asked():
    code = ("import sys, analysis; assert 'torch' not in sys.modules and 'mlflow' not in sys.modules; "
            "from importlib.metadata import version; assert analysis.__version__ == version('widedeep'); "
            "assert callable(analysis.cka.cka) and callable(analysis.cka.gram) and analysis.cka.MinibatchCKA; "
            "assert callable(analysis.registry.load_model) and callable(analysis.features.tapped); "
            "assert callable(analysis.blocks.find_blocks); assert 'torch' in sys.modules; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
