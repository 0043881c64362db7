"""``python -m vpatient.train``: the ``vpatient train`` command as one rank of a torchrun job.

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m vpatient.train --data DIR --out MODEL

It takes the options of ``vpatient train`` (the same command, not a copy), joins the
process group torchrun describes (:func:`vpatient.train.distributed.process_group`) and
trains with the other ranks; rank 0 writes the checkpoint. Started without torchrun it
trains in one process. A rank's error is one line on stderr, also left for torchrun to
report (``TORCHELASTIC_ERROR_FILE``), never a stack trace (``--debug`` shows it).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch.distributed
import typer

from vpatient.train.data import Rank

#: what the messages of gloo's and nccl's failed collectives say when a peer went away
_PEER_GONE = ("gloo", "NCCL", "Connection reset by peer", "Connection closed by peer")
#: options of the ``vpatient`` command itself (not of ``train``), accepted before the train options
_LEADING = ("-v", "--verbose")


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``vpatient train ARGV`` as this process's rank (or alone, without torchrun); exits with the command's code."""
    from vpatient.atomic import unwind_on_sigterm
    from vpatient.cli import app
    from vpatient.errors import VPatientError
    from vpatient.train.data import SINGLE_PROCESS
    from vpatient.train.distributed import LOST_CONTACT, LostContactError, process_group

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    leading = [a for a in args if a in _LEADING]
    args = [*leading, "train", *(a for a in args if a not in _LEADING)]
    unwind_on_sigterm()  # torchrun stops the ranks with SIGTERM when one fails: unwind, so that staged output is removed
    rank = SINGLE_PROCESS
    try:
        with process_group() as rank:
            app(args=args, prog_name="python -m vpatient.train")
    except (VPatientError, FileNotFoundError, PermissionError, torch.distributed.DistError) as exc:
        if debug:
            raise
        # a collective in the backward pass (DistributedDataParallel's) fails as torch's own error
        lost = isinstance(exc, (LostContactError, torch.distributed.DistError))
        message = f"{LOST_CONTACT}: {_first_line(exc)}" if isinstance(exc, torch.distributed.DistError) else str(exc)
        _fail(message, rank, lost)
    except Exception as exc:  # not one of vpatient's errors: still one line, and torchrun reports it (--debug: the trace)
        if debug:
            raise
        message = _first_line(exc)
        # torch raises a collective's transport failure (a peer gone) as a plain RuntimeError: the peer's own error comes first
        lost = rank.world > 1 and any(sign in message for sign in _PEER_GONE)
        _fail(f"unexpected {type(exc).__name__}: {message} (--debug shows where)", rank, lost)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fail(message: str, rank: Rank, lost: bool) -> None:
    """Report a rank's error on one line, leave it for torchrun's summary, and exit 1."""
    from vpatient.train.distributed import record_rank_error

    who = f" (rank {rank.index} of {rank.world})" if rank.world > 1 else ""
    record_rank_error(message, lost_contact=lost)
    typer.secho(f"error{who}: {message}", err=True, fg="red")
    sys.exit(1)


if __name__ == "__main__":
    main()
