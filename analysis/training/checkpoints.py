"""Per-epoch training checkpoints: one safetensors file, no pickle, durable before it counts.

The file holds the network's parameters and buffers (`model.*`; a pack's network holds its K
models, pack.py), the optimizer's momentum buffers (`momentum.<i>`, in parameter order) and, as
safetensors metadata, a JSON record of each model's metric history (`histories`), the models that
diverged (`errors`) and the caller's bookkeeping (lineage ids, run ids). The
data order and augmentation of each epoch derive from (seed, epoch), so no RNG state is needed
for a resumed run to end with the same weights as an uninterrupted one, even one resumed from the
checkpoint before the newest.

A save writes a temporary file and fsyncs it, keeps the checkpoint it replaces as
`<name>.previous`, renames the new one into place and fsyncs the folder: after a crash at any
moment, the newest checkpoint or the one before it is whole on disk. A checkpoint that does not
read back whole (zero bytes, truncated, a bad header: what a crash without fsync or a failing disk
leaves) is set aside as `<name>.corrupt-<unix time>`, never deleted, with a warning, and training
resumes from the one before it, or from scratch. A save that fails (a full disk, above all)
removes its temporary file, leaves the previous checkpoint as it was and stops the training in
one line naming the folder (CheckpointWriteError); rerunning the same command resumes.

Every process that trains from a checkpoint holds `<name>.lock` (training_lock): the one that
starts a training takes it alone, so that it never resumes under live processes of the same
training (orphaned data-parallel ranks, a second `train` of the same config), then shares it
with its own ranks; a rerun waits for the previous processes to exit (they stop within seconds
of their launcher, training/distributed.py), then resumes. flock: one machine's guarantee.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..data import CACHE_DIR_ENV, cache_dir

__all__ = ["checkpoint_path", "check_writable", "read_meta", "histories", "save", "restore", "remove", "snapshot_dir",
           "save_snapshot", "CheckpointWriteError", "training_lock", "LOCK_WAIT_S"]

UNREADABLE = (SafetensorError, OSError, ValueError, KeyError)


class CheckpointWriteError(RuntimeError):
    """A checkpoint or snapshot could not be written; the message names the folder and the fix."""


def _write_whole(tmp: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` to `tmp` durably (mode 0644), or remove what was written and raise
    CheckpointWriteError. safetensors writes 0600; another worker sharing the cache resumes from it."""
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o644)
        _fsync(tmp)
    except (OSError, SafetensorError) as err:
        tmp.unlink(missing_ok=True)
        full = getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(err)
        reason = "no space left on the device" if full else (getattr(err, "strerror", None) or str(err).splitlines()[0])
        raise CheckpointWriteError(
            f"cannot write training checkpoints under {tmp.parent} ({reason}); the previous checkpoint is kept: free space or "
            f"set {CACHE_DIR_ENV} to another disk, then rerun the same command to resume") from None


def checkpoint_path(fingerprint: str) -> Path:
    return cache_dir() / "checkpoints" / f"{fingerprint}.safetensors"


LOCK_WAIT_S = 60.0  # how long a new training waits for the processes of a previous one to exit


@contextlib.contextmanager
def training_lock(path: Path, alone_first: bool = True, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the lock of the training whose checkpoint is `path`, shared. With `alone_first` (the
    process that starts a training), first wait, up to `wait_s`, until no other process holds it;
    the data-parallel ranks of that process then join with `alone_first=False`."""
    lock = path.with_name(f"{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        if alone_first:
            deadline = time.monotonic() + wait_s
            waiting = False
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holders = _holders(lock)
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"this training is still running in other processes (pids {holders or 'unknown'}) "
                                           f"that hold {lock}; wait for them to finish or stop them, then rerun") from None
                    if not waiting:
                        print(f"waiting up to {wait_s:.0f} s for the processes of a previous run of this training "
                              f"(pids {holders or 'unknown'}) to exit", file=sys.stderr)
                        waiting = True
                    time.sleep(0.25)
        fcntl.flock(f, fcntl.LOCK_SH)
        yield


def _holders(lock: Path) -> str:
    """The pids holding a flock on `lock`, from /proc/locks (Linux; '' elsewhere)."""
    try:
        inode = lock.stat().st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return ""
    pids = sorted({int(f[4]) for f in (line.split() for line in lines)
                   if len(f) > 5 and f[1] == "FLOCK" and f[5].rsplit(":", 1)[-1] == str(inode)})
    return ", ".join(map(str, pids))


def snapshot_dir(path: Path) -> Path:
    """Where a training keeps its weight snapshots (train -P snapshot_every) until it registers:
    beside its checkpoint, so a resumed run still logs the snapshots taken before the crash."""
    return path.with_name(f"{path.stem}.snapshots")


def save_snapshot(folder: Path, epoch: int, state: dict[str, torch.Tensor]) -> Path:
    """A model's state dict after `epoch` epochs as folder/epoch-NNNN.safetensors, written whole or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"epoch-{epoch:04d}.safetensors"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _write_whole(tmp, {k: v.detach().cpu().contiguous() for k, v in state.items()})
    os.replace(tmp, path)
    return path


def _previous(path: Path) -> Path:
    return path.with_name(f"{path.name}.previous")


def check_writable(path: Path) -> None:
    """Refuse, before any training, a checkpoint folder that cannot be written (a read-only
    cache would otherwise fail after the first epoch)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f".write-test.{os.getpid()}")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"cannot write training checkpoints under {path.parent} ({err.strerror or err}); "
                              f"set {CACHE_DIR_ENV} to a writable folder") from None


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The tensors and metadata of the newest whole checkpoint at `path`, or None when there is none.

    A corrupt checkpoint is set aside and the one before it takes its place. Temporary files of a
    writer killed mid-save are removed: they were never renamed, so never taken as complete."""
    for partial in path.parent.glob(f".{path.name}.*.tmp"):
        partial.unlink(missing_ok=True)
    for candidate in (path, _previous(path)):
        if not candidate.exists():
            continue
        try:
            tensors = load_file(str(candidate))  # reads every tensor: a truncated file fails here
            with safe_open(str(candidate), framework="pt") as f:
                meta = json.loads(f.metadata()["meta"])
        except UNREADABLE as err:
            aside = candidate.with_name(f"{candidate.name}.corrupt-{int(time.time())}")
            os.replace(candidate, aside)
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            print(f"warning: checkpoint {candidate} is unreadable ({reason}); set aside as {aside.name}, "
                  "resuming from the one before it or from scratch", file=sys.stderr)
            continue
        if candidate != path:
            os.replace(candidate, path)
        return tensors, meta
    return None


def read_meta(path: Path) -> dict | None:
    """The metadata of the newest whole checkpoint at `path` (see `_load`), or None."""
    loaded = _load(path)
    return None if loaded is None else loaded[1]


def histories(meta: dict | None, size: int = 1) -> list[list[dict]]:
    """Each model's metric history in a checkpoint's metadata (empty ones for none); a checkpoint
    written before packs existed holds one model's, as `history`."""
    if meta is None:
        return [[] for _ in range(size)]
    found = meta["histories"] if "histories" in meta else [meta["history"]]
    if len(found) != size:
        raise ValueError(f"the checkpoint holds {len(found)} model(s), not {size}; remove it to train anew")
    return found


def save(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: dict) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"momentum.{i}"] = buf.detach().cpu().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _write_whole(tmp, tensors, {"meta": json.dumps(meta)})
    if path.exists():
        os.replace(path, _previous(path))  # kept until the new one is durable
    os.replace(tmp, path)
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def restore(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
    """Load the newest whole checkpoint's weights and momentum in place (see `_load`); returns its
    metadata, or None when there is none and nothing was loaded."""
    loaded = _load(path)
    if loaded is None:
        return None
    tensors, meta = loaded
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        if f"momentum.{i}" in tensors:
            optimizer.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(tensors[f"momentum.{i}"])
    return meta


def remove(path: Path) -> None:
    """Remove the checkpoint, the one before it and the snapshots (the registry and the run now hold them)."""
    path.unlink(missing_ok=True)
    _previous(path).unlink(missing_ok=True)
    shutil.rmtree(snapshot_dir(path), ignore_errors=True)
