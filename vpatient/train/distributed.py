"""Data-parallel training across processes and machines with torch.distributed, launched by torchrun.

Each process (a *rank*) holds a copy of the network. Every optimiser step, each rank
computes the loss of its share of the global mini-batch (:func:`vpatient.train.loop.training_step_loss`
weighs it so that the average over ranks is the global batch's mean) and
:class:`~torch.nn.parallel.DistributedDataParallel` averages the gradients during the
backward pass, so every rank takes the same step and the copies stay equal. Seeds are
the same on every rank (the run's ``--seed``; :func:`vpatient.ensemble.fit_data_parallel` checks that every
rank was given the same settings and patients before training).

- :func:`process_group`: joins the group torchrun describes in the environment (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); gloo for a network on
  the CPU, nccl for one on a GPU (vpatient trains on the CPU today, so gloo).
- :func:`launch_local`: ``vpatient train --nproc N``: torchrun's standalone launcher in
  this process, with the options forwarded; every child is stopped on Ctrl-C or failure
  and a failed rank's own message is reported.
- :func:`vpatient.ensemble.fit_data_parallel` (above this layer): one network, or the members of an ensemble one after
  another, each trained by all the ranks (see there why not members side by side).

Rank 0 alone decides early stopping, the learning rate and the time limit from the
values it broadcasts, and alone writes the checkpoint (``vpatient train``); the others write nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from vpatient.errors import VPatientError
from vpatient.train.data import SINGLE_PROCESS, Rank

if TYPE_CHECKING:  # the loop imports this module: its types only, for the signatures
    pass

__all__ = [
    "DistributedError",
    "LostContactError",
    "all_reduce_sums",
    "backend_for",
    "broadcast_from_primary",
    "command_line_args",
    "current_rank",
    "data_parallel",
    "launch_local",
    "launched_by_torchrun",
    "process_group",
    "rank_threads",
    "record_rank_error",
]

log = logging.getLogger(__name__)

#: the variables torchrun sets for every process it starts
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

#: how long a collective waits for a missing rank before failing (torch's own default is 30 minutes)
GROUP_TIMEOUT = datetime.timedelta(minutes=10)


class DistributedError(VPatientError, RuntimeError):
    """The process group could not form, or a rank failed or vanished during training."""


class LostContactError(DistributedError):
    """Another rank vanished during a collective: this rank fails because of that one, not on its own."""


#: what a rank says when its collectives fail because another rank is gone
LOST_CONTACT = "lost contact with the other ranks (one failed or was stopped)"


def launched_by_torchrun() -> bool:
    """Whether this process is one rank of a torchrun job (torchrun set ``RANK`` and ``WORLD_SIZE``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def current_rank() -> Rank:
    """This process's place in the data-parallel group it joined (:func:`process_group`); one process when none."""
    if dist.is_available() and dist.is_initialized():
        return Rank(dist.get_rank(), dist.get_world_size())
    return SINGLE_PROCESS


def backend_for(device: torch.device) -> str:
    """The collective backend for a network on ``device``: nccl for a GPU, gloo for the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def rank_threads(cores: int | None = None, local_world: int | None = None) -> int:
    """torch threads per rank when not told: the machine's cores shared by the ranks on it (``LOCAL_WORLD_SIZE``), at least 1."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    if local_world is None:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return max(1, cores // max(1, local_world))


def _torchrun_env() -> tuple[int, int, int]:
    """RANK, WORLD_SIZE and LOCAL_RANK from the environment, checked; a missing or bad one is a DistributedError."""
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise DistributedError(f"not started by torchrun: {', '.join(missing)} not set (run `torchrun ... -m vpatient.train`)")
    try:
        rank, world, local = (int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise DistributedError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers") from None
    if not 0 <= rank < world:
        raise DistributedError(f"RANK = {rank} is not one of WORLD_SIZE = {world} processes")
    return rank, world, local


@contextlib.contextmanager
def process_group(device: torch.device | None = None) -> Iterator[Rank]:
    """Join the process group torchrun describes and leave it after the block; yields this process's :class:`Rank`.

    Not started by torchrun: one process, no group. (:func:`vpatient.ensemble.fit_data_parallel` checks that
    every rank was given the same settings, seed and number of patients.)
    """
    if not launched_by_torchrun():
        yield SINGLE_PROCESS
        return
    rank, world, local = _torchrun_env()
    device = device or torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(local)
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        dist.init_process_group(backend_for(device), rank=rank, world_size=world, timeout=GROUP_TIMEOUT)
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(
            f"rank {rank} of {world} could not join the process group at {where}: {_first_line(exc)}"
        ) from None
    try:
        yield Rank(rank, world)
    finally:
        dist.destroy_process_group()


def same_on_every_rank(value: float) -> bool:
    """Whether every rank holds the same ``value``: the largest of them equals the smallest."""
    extremes = torch.tensor([value, -value], dtype=torch.float64)
    _collective(dist.all_reduce, extremes, op=dist.ReduceOp.MAX)
    return bool(extremes[0] == -extremes[1])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def all_reduce_sums(values: Sequence[float]) -> list[float]:
    """``values`` summed over the ranks, in float64 (every rank gets the same sums)."""
    tensor = torch.tensor(list(values), dtype=torch.float64)
    _collective(dist.all_reduce, tensor)
    return tensor.tolist()


def broadcast_from_primary(values: Sequence[float]) -> list[float]:
    """Rank 0's ``values`` on every rank (float64, exact): what rank 0 decided, or the clock it read."""
    tensor = torch.tensor(list(values), dtype=torch.float64)
    _collective(dist.broadcast, tensor, src=0)
    return tensor.tolist()


def broadcast_state(module: nn.Module) -> None:
    """Rank 0's weights in ``module`` on every rank."""
    for tensor in module.state_dict().values():
        _collective(dist.broadcast, tensor, src=0)


def _collective(operation: Any, *args: Any, **kwargs: Any) -> None:
    try:
        operation(*args, **kwargs)
    except dist.DistError as exc:
        raise LostContactError(f"{LOST_CONTACT}: {_first_line(exc)}") from None


def data_parallel(module: nn.Module) -> nn.Module:
    """``module`` wrapped so that its backward pass averages the gradients over the ranks.

    The module's forward computes the step's loss (the loop's ``_StepLoss`` calls
    ``LatentODE.elbo``), so DistributedDataParallel sees the forward it hooks. Chosen over a
    hand-written all-reduce of the flattened gradients after backward: it all-reduces
    buckets of gradients while the backward pass still runs, checks at construction that
    the ranks' parameters agree, and measured no slower (2 gloo ranks on 2 cores, synthetic
    cohort, batch 64, one thread each: median step 0.543 s against 0.552 s by hand,
    interleaved in one run). ``static_graph``: the network uses the same parameters every
    step, so any it never uses (an event head of a dataset with no events) are found once,
    and their gradients stay None as in one process.
    """
    from torch.nn.parallel import DistributedDataParallel

    if not dist.is_initialized():
        raise DistributedError("data-parallel training needs its process group: run inside process_group() (started by torchrun)")
    return DistributedDataParallel(module, static_graph=True)


# --------------------------------------------------------------------------- errors of a rank


def record_rank_error(message: str, lost_contact: bool = False) -> None:
    """Leave ``message`` where torchrun's agent reads a failed rank's reason (``TORCHELASTIC_ERROR_FILE``), if it set one.

    torchrun then reports this message, not a pointer to its documentation, and so does
    :func:`launch_local`, which names first a rank that failed on its own, not one that
    ``lost_contact`` with it.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        with contextlib.suppress(OSError), open(path, "w", encoding="utf-8") as f:
            json.dump({"message": message, "timestamp": int(time.time()), "vpatient_lost_contact": lost_contact}, f)


# --------------------------------------------------------------------------- vpatient train --nproc N


def command_line_args(ctx: Any, leave_out: Sequence[str] = ()) -> list[str]:
    """The options of ``ctx``'s command (a click context) that were given on the command line, as arguments again (for the ranks).

    Only those given (not defaults), so that a rank layers them over a ``--settings``
    file exactly as the command did.
    """
    args: list[str] = []
    for param in ctx.command.params:
        name = param.name
        # by what it is, not isinstance: typer ships its own copy of click
        if getattr(param, "param_type_name", "") != "option" or name is None or name in leave_out:
            continue
        if getattr(ctx.get_parameter_source(name), "name", "") != "COMMANDLINE":
            continue
        value = ctx.params[name]
        if getattr(param, "is_flag", False) and not getattr(param, "count", False):
            if param.secondary_opts:
                args.append(param.opts[0] if value else param.secondary_opts[0])
            elif value:
                args.append(param.opts[0])
        elif value is not None:
            args += [param.opts[0], str(value)]
    return args


def launch_local(nproc: int, args: Sequence[str], verbose: bool = False) -> None:
    """Run ``python -m vpatient.train ARGS`` as ``nproc`` ranks on this machine (torchrun's standalone launcher), and wait.

    Every rank is stopped when one fails or on Ctrl-C; a failure is a
    :class:`DistributedError` naming the rank and its own message.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    if nproc < 1:
        raise DistributedError(f"--nproc must be at least 1, got {nproc}")
    # torchrun --standalone: a rendezvous on a free local port (torchrun's own run() sets these; config_from_args does not)
    standalone = ["--nnodes", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", "--rdzv-id", uuid.uuid4().hex]
    torchrun = [*standalone, "--nproc-per-node", str(nproc), "--max-restarts", "0", "--monitor-interval", "0.2"]
    try:
        with _quiet_torch_elastic(not verbose):
            config, command, command_args = config_from_args(
                parse_args([*torchrun, "-m", "vpatient.train", *(["--verbose"] if verbose else []), *args])
            )
            config.shutdown_timeout = 5  # seconds a stopped rank has to clean up (its staged files) before SIGKILL
            elastic_launch(config, command)(*command_args)
    except ChildFailedError as exc:
        raise DistributedError(_failure_message(exc, nproc)) from None
    except (SignalException, KeyboardInterrupt):
        raise DistributedError(
            f"interrupted: the {nproc} training processes were stopped (a checkpoint is written whole or not at all)"
        ) from None


@contextlib.contextmanager
def _quiet_torch_elastic(quiet: bool) -> Iterator[None]:
    """Silence torch's launcher logs in the block (each of its loggers sets its own level): failures are reported by vpatient."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict) if name.startswith("torch.distributed")]
    levels = [logger.level for logger in loggers]
    if quiet:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _blame(failure: Any) -> int:
    """How surely a failed rank is the cause, 0 the surest: its own error, an exit or a kill, stopped by torchrun, or lost contact."""
    data = failure.error_file_data
    if data.get("vpatient_lost_contact"):
        return 3  # failed because another rank vanished
    if data.get("message"):
        return 0
    stopped = failure.exitcode in (-signal.SIGTERM, 128 + signal.SIGTERM)  # torchrun stops the others with SIGTERM
    return 2 if stopped else 1


def _failure_message(exc: Any, nproc: int) -> str:
    """Which rank failed first, and why (its own message where it left one, else its exit code or signal)."""
    failures = exc.failures  # global rank -> ProcessFailure
    rank, failure = min(failures.items(), key=lambda item: (_blame(item[1]), item[1].timestamp, item[0]))
    if failure.error_file_data.get("message"):
        message = failure.message if isinstance(failure.message, str) else failure.message.get("message", "")
    else:
        message = failure.message if failure.exitcode < 0 else f"exit code {failure.exitcode}"
    return f"training rank {rank} of {nproc} failed: {message}; every rank was stopped and nothing was written"
