"""Training in several processes through Hugging Face accelerate.

:func:`trainers.loop.fit` asks :func:`start` for a :class:`Distributed` when it runs under a
launcher that sets ``WORLD_SIZE > 1`` (``accelerate launch``, ``torchrun``, or
:func:`launch` behind ``--processes N``). ``accelerate.Accelerator`` then owns what is not
ours to write again: the process group (NCCL on CUDA, Gloo on the CPU, several machines),
each process's device, DistributedDataParallel around the model, the optimiser, mixed
precision and the gradient reduction. The data path stays vetset's: every process holds the
whole uint8 dataset on its own device and indexes its share of one permutation drawn from the
same seed, so no DataLoader is prepared.

``batch_size`` is the global batch: each of N processes runs ``batch_size / N`` rows per step
and DDP averages their gradients, so a recipe keeps its learning rate whatever N is, and a run
without augmentation or BatchNorm takes the steps a single process would (tested).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from pipelines.errors import VetsetError

from .accel import cuda_device_count, is_cuda, wants_cuda


def world_size() -> int:
    """Processes in this run (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True except on ranks > 0 of a run in several processes (only rank 0 writes files)."""
    return process_rank() == 0


@dataclass
class Distributed:
    """One process's view of a run in several processes (an ``accelerate.Accelerator``)."""

    accelerator: Any

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        """(model wrapped for DDP, accelerate's optimiser); the unwrapped ``model`` shares
        the parameters, so hooks and checks keep using it."""
        return self.accelerator.prepare(model, optimizer)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def total(self, values: torch.Tensor) -> torch.Tensor:
        """The sum of ``values`` over the processes (every process gets it)."""
        return self.accelerator.reduce(values, reduction="sum")

    def local_batch(self, batch_size: int) -> int:
        if batch_size % self.world:
            raise VetsetError(f"batch size {batch_size} is the global batch and must be a multiple of the "
                              f"{self.world} processes")
        return batch_size // self.world


def start(device: torch.device, amp: bool) -> Distributed | None:
    """A :class:`Distributed` under a launcher with WORLD_SIZE > 1, else None (one process:
    nothing of accelerate is imported or touched)."""
    if world_size() <= 1:
        return None
    try:
        from accelerate import Accelerator
    except ImportError:  # pragma: no cover (accelerate is a dependency)
        raise VetsetError("training in several processes needs accelerate (pip install accelerate)") from None
    acc = Accelerator(cpu=not is_cuda(device), mixed_precision="bf16" if amp else "no")
    if is_cuda(device) and acc.device != device:
        raise VetsetError(f"process {acc.process_index} was given {device} but accelerate placed it on {acc.device}")
    return Distributed(acc)


# --------------------------------------------------------------------------- launching


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(module_args: Sequence[str], processes: int) -> list[str]:
    """``accelerate launch`` of ``python -m trainers MODULE_ARGS`` in ``processes`` processes
    on this machine (on a free port, so runs side by side do not collide). accelerate's
    multi-process launcher (torch elastic) serves CPU processes too: :func:`launch` hides CUDA
    from them and :func:`start` then joins a Gloo group (``accelerate launch --cpu`` starts one
    process unless MPI is set up)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), "-m", "trainers", *module_args]


def check_processes(processes: int, device: str = "auto") -> None:
    """One-line errors before anything starts: N < 1, or more GPU processes than GPUs."""
    if processes < 1:
        raise VetsetError(f"--processes {processes}: give 1 or more")
    if processes > 1 and wants_cuda(device) and processes > cuda_device_count():
        raise VetsetError(f"--processes {processes} on CUDA needs {processes} GPUs; this machine has "
                          f"{cuda_device_count()} (use --device cpu for CPU processes)")


def launch(module_args: Sequence[str], processes: int, device: str = "auto",
           log: Callable[[str], Any] | None = print) -> None:
    """Run ``python -m trainers MODULE_ARGS`` in ``processes`` processes and wait; rank 0's
    output goes to ``log``. A failed run is one :class:`VetsetError` with the processes' own
    error line (their tracebacks stay out of it)."""
    check_processes(processes, device)
    env = dict(os.environ)
    if not wants_cuda(device):
        env["CUDA_VISIBLE_DEVICES"] = ""  # CPU processes: Gloo, no GPU picked up by accident
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    env["PYTHONUNBUFFERED"] = "1"
    # torch elastic makes a log folder (torchelastic_*) in the temp dir per launch and leaves
    # it there: the launcher gets a temp dir of its own, removed when it is done; torch's
    # compile cache stays where it would have been, so later runs still find it
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"torchinductor_{_user()}"))
    with tempfile.TemporaryDirectory(prefix="vetset-launch-") as scratch:
        env["TMPDIR"] = scratch
        for attempt in range(2):
            code, stderr_lines = _run_launcher(launch_command(module_args, processes), env, log)
            if code == 0 or attempt or not any("address already in use" in line.lower() for line in stderr_lines):
                break  # else the free port was taken between choosing it and binding it: once more
    if code != 0:
        errors = [line.rstrip("\n")[len("error: "):] for line in stderr_lines if line.startswith("error: ")]
        reason = errors[0] if errors else f"the launcher exited with code {code}"
        raise VetsetError(f"training in {processes} processes failed: {reason}")


def _user() -> str:
    """The user name torch puts in its default compile-cache folder's name."""
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # noqa: BLE001  (no user name in this environment)
        return "unknown"


def _run_launcher(command: list[str], env: dict, log: Callable[[str], Any] | None) -> tuple[int, list[str]]:
    """(exit code, stderr lines) of the launcher; its stdout lines go to ``log``."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    # stderr (the processes' error lines, the launcher's tracebacks and warnings) is read on
    # the side and kept out of the log; rank 0's progress lines come on stdout
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(proc.stderr), daemon=True)
    reader.start()
    for line in proc.stdout:
        line = line.rstrip("\n")
        if log is not None and line and not _launcher_noise(line):
            log(line)
    code = proc.wait()
    reader.join()
    return code, stderr_lines


def _launcher_noise(line: str) -> bool:
    """accelerate's and torchrun's own chatter (defaults used, thread warnings)."""
    noise = ("The following values were not passed", "\t`--", "To avoid this warning", "W1", "W0", "*****",
             "Setting OMP_NUM_THREADS")
    return line.startswith(noise)
