"""Data-parallel training on PyTorch's own engine: DistributedDataParallel in processes that
torchrun starts (`train -P nproc=N` on one machine; torchrun itself across machines).

- `launch` runs torchrun for N local processes and returns its exit status. The launching
  process holds the MLflow run meanwhile, so the run ends FAILED whichever rank dies, even by
  SIGKILL (torchrun then stops the others and exits non-zero).
- The launcher owns its processes: torchrun runs in a process group of its own, which the
  launcher stops (SIGTERM, then SIGKILL) whenever it leaves `launch` early (SIGTERM or SIGINT,
  turned into exceptions, or an error); and each rank watches the launcher's pid
  (LAUNCHER_PID_ENV) and stops within seconds once it is gone, so that not even a SIGKILLed
  launcher leaves ranks training on as orphans.
- Every rank builds the same model from the same seed, reads the same checkpoint on resume and
  takes its own slice of every global batch (`Shard.rows`); DDP averages the gradients, so a
  step is the step of one process on the global batch, except that BatchNorm normalises each
  rank's slice by its own statistics (as torchvision's ImageNet recipe does). Rank 0 alone
  writes checkpoints and snapshots, logs and registers.
- Backends: NCCL on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import torch
import torch.distributed as dist

from ..store.tracking import process_alive  # torch-free, where the store reaps runs of dead processes

__all__ = ["Shard", "current", "in_worker", "init", "close", "sum_all", "share_buffers", "broadcast", "launch", "launched",
           "LAUNCHER_PID_ENV"]

LAUNCHER_PID_ENV = "WIDEDEEP_LAUNCHER_PID"  # set for the processes `launch` starts: the launcher's pid
WATCH_EVERY_S = 1.0  # how often a rank checks that its launcher still lives
STOP_GRACE_S = 10.0  # from SIGTERM to SIGKILL, for torchrun's group and for a rank whose launcher is gone


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's place among the data-parallel processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, global_batch: int) -> slice:
        """This rank's slice of a global batch (the batch size divides by the world size)."""
        per_rank = global_batch // self.world
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def device(self, device: torch.device) -> torch.device:
        """The device of this rank: its own GPU on CUDA (torchrun's LOCAL_RANK)."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.world > 1 else device


def current() -> Shard:
    """From torchrun's environment; one process alone is rank 0 of 1."""
    env = os.environ
    return Shard(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def in_worker() -> bool:
    """Whether this process was started by torchrun."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "WORLD_SIZE" in os.environ


def init(device: torch.device) -> Shard:
    """Join the process group of a torchrun launch (no-op for a single process). A SIGTERM, which
    torchrun sends the surviving ranks when one fails, becomes an exception, so the rank's MLflow
    run, if it holds one, ends FAILED rather than RUNNING."""
    shard = current()
    if shard.world > 1 and not dist.is_initialized():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        if launched():
            threading.Thread(target=_watch_launcher, args=(int(os.environ[LAUNCHER_PID_ENV]),), daemon=True,
                             name="watch-launcher").start()
        if device.type == "cuda":
            torch.cuda.set_device(shard.local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return shard


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def sum_all(values: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of a tensor every rank holds (the tensor itself with one process)."""
    if dist.is_initialized():
        dist.all_reduce(values)
    return values


def share_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank: each rank's last batches
    moved its own, and evaluation must score the model rank 0 registers."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def broadcast(value: Any) -> Any:
    """Rank 0's `value` on every rank (picklable objects)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def launched() -> bool:
    """Whether this process is a rank that `launch` started."""
    return bool(os.environ.get(LAUNCHER_PID_ENV))


def _watch_launcher(pid: int) -> None:
    """Stop this rank once its launcher is gone (even SIGKILLed): SIGTERM, which ends its run
    FAILED, then, if a collective still blocks the main thread, exit outright."""
    while process_alive(pid):
        time.sleep(WATCH_EVERY_S)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(STOP_GRACE_S)
    os._exit(143)


def launch(nproc: int, module: str, env: dict[str, str]) -> int:
    """`torchrun --standalone --nproc_per_node nproc -m module`, with `env` added to the environment
    (where the processes find what to do); returns its exit status (non-zero when any rank failed).
    On SIGTERM or SIGINT, or any error, it stops torchrun's whole process group before it returns."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", module]
    proc = subprocess.Popen(command, env={**os.environ, **env, LAUNCHER_PID_ENV: str(os.getpid())}, start_new_session=True)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SIGINT is KeyboardInterrupt already
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM torchrun's process group (torchrun and its ranks); SIGKILL whatever of it is left
    after STOP_GRACE_S."""
    deadline = time.monotonic() + STOP_GRACE_S
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        while time.monotonic() < deadline:
            proc.poll()  # reaps torchrun, whose zombie would keep the group alive
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
    proc.wait()
