"""Shared fixtures: a tiny real CIFAR-10 ImageFolder, and real SQLite MLflow stores copied from one
template (creating a store runs schema migrations for seconds; copying the file takes ~0.1 s)."""

from __future__ import annotations

import contextlib
from typing import Callable
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_PER_CLASS, TEST_PER_CLASS = 30, 10


def make_image_folder(root: Path) -> Path:
    """30 train and 10 test images per class, copied from the real CIFAR-10 beside the repo when it
    is there, else random JPEGs of the same layout (labels then carry no signal)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                dst = root / split / c / f"{i:04d}.jpg"
                src = SHARED_CIFAR / split / c / f"{i:04d}.jpg"
                if src.exists():
                    shutil.copy(src, dst)
                else:
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(dst)
    return root


def make_mixed_folder(root: Path, per_class: tuple[int, int] = (12, 4), classes: int = 3) -> Path:
    """A small ImageFolder (train/ and val/) in the shapes real folders come in: JPEGs of varied
    sizes, grayscale and CMYK JPEGs, an RGBA PNG, a PNG saved under .jpg and a BMP. Each class is a
    colour, so a model can learn it."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    modes = ["RGB", "L", "CMYK", "RGBA", "png-as-jpg", "bmp"]
    for split, count in zip(("train", "val"), per_class):
        for c in range(classes):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(count):
                h, w = rng.integers(48, 120, 2)
                pixels = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
                pixels[..., c % 3] += 170
                image = Image.fromarray(pixels)
                mode = modes[i % len(modes)]
                path = root / split / f"class{c}" / f"{i:03d}.{'bmp' if mode == 'bmp' else 'png' if mode == 'RGBA' else 'jpg'}"
                if mode in ("L", "CMYK", "RGBA"):
                    image.convert(mode).save(path)
                else:
                    image.save(path, format="PNG" if mode == "png-as-jpg" else None)
    return root


@pytest.fixture(scope="session")
def mixed_folder(tmp_path_factory) -> Path:
    return make_mixed_folder(tmp_path_factory.mktemp("data") / "folder")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "cifar10")


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def store_template(tmp_path_factory) -> Path:
    """A migrated, empty SQLite tracking store, made once per session in a subprocess."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    code = "import mlflow, sys; mlflow.set_tracking_uri(sys.argv[1]); mlflow.search_experiments()"
    # Run in the template's folder: experiment 0 keeps the artifact root resolved at creation
    # (./mlruns of the creating process), which must not be the repository.
    subprocess.run([sys.executable, "-c", code, f"sqlite:///{path}"], check=True, env={**os.environ}, cwd=path.parent)
    return path


@pytest.fixture
def store(tmp_path, monkeypatch, store_template, tiny_data, cache_root) -> Path:
    """A fresh tracking store in the test's own directory, which is also the working directory
    (artifacts go to ./mlruns as with MLflow's defaults). Returns that directory."""
    shutil.copy(store_template, tmp_path / "mlflow.db")
    yield from _tracking_in(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, monkeypatch, tiny_data, cache_root)


def _tracking_in(uri: str, workdir: Path, monkeypatch, tiny_data: Path, cache_root: Path):
    """Point MLflow (in this process and in children) and the data and cache folders at a test's
    own store and directory; yields `workdir`; ends runs left open and resets MLflow after."""
    import mlflow

    monkeypatch.chdir(workdir)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("WIDEDEEP_DATA_DIR", str(tiny_data))
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(cache_root))
    mlflow.set_tracking_uri(uri)
    yield workdir
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


PG_ADMIN_URL = os.environ.get("WIDEDEEP_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def fresh_postgres_database():
    """A new PostgreSQL database on the real server, dropped after. Skipped, not failed, only
    where no server answers and CI is unset (CI starts one in .ci/run)."""
    import uuid

    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as err:
        if os.environ.get("CI"):
            raise  # CI starts the server: its absence there is a failure
        pytest.skip(f"no PostgreSQL at {PG_ADMIN_URL}: {str(err).splitlines()[0]}")
    name = f"widedeep_test_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def postgres_url():
    """A fresh MLflow tracking database on PostgreSQL for one test (schema creation: seconds)."""
    yield from fresh_postgres_database()


@pytest.fixture
def optuna_pg_url():
    """A separate database per test for Optuna (its tables and alembic version are its own)."""
    yield from fresh_postgres_database()


@pytest.fixture
def pg_store(tmp_path, monkeypatch, postgres_url, tiny_data, cache_root):
    """A fresh PostgreSQL database as the tracking store, artifacts under the test's dir; yields its URL."""
    for _ in _tracking_in(postgres_url, tmp_path, monkeypatch, tiny_data, cache_root):
        yield postgres_url


def subprocess_env(**extra: str) -> dict[str, str]:
    """The test's environment for a child process, its Python first on PATH (the MLproject
    commands call `python`, as in an activated venv)."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def mlflow_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`mlflow run <repo> ...` as a user would type it, in `cwd`."""
    return subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", *args],
        cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=600,
    )


@pytest.fixture
def entry_run(store, monkeypatch) -> str:
    """What `mlflow run` does before an entry point starts: create the run and hand its id over in
    MLFLOW_RUN_ID (the stage then resumes it). Returns the run id."""
    from mlflow import MlflowClient

    run = MlflowClient().create_run(experiment_id="0")
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    return run.info.run_id


@contextlib.contextmanager
def serving(command: Callable[[int], list[str]], health: str, cwd: Path | None = None, **env: str):
    """`python <command(port)>` on a free port of 127.0.0.1; yields its URL once `health` answers."""
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, *command(port)], cwd=cwd, env=subprocess_env(**env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}{health}", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, f"{' '.join(command(port)[:4])} did not start"
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def mlflow_server(backend: str, cwd: Path, *extra: str):
    """`mlflow server` on a free port of 127.0.0.1 over `backend`; yields its URL once healthy."""
    def command(port: int) -> list[str]:
        return ["-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                "--backend-store-uri", backend, *extra]

    with serving(command, "/health", cwd, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false") as url:
        yield url
