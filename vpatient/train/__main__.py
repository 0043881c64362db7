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

import signal
import sys
from collections.abc import Sequence
from types import FrameType

import torch.distributed
import typer

#: options of the ``vpatient`` command itself (not of ``train``), accepted before the train options
_LEADING = ("-v", "--verbose")


def _stop(signum: int, frame: FrameType | None) -> None:
    # torchrun stops the ranks with SIGTERM when one fails: unwind, so that staged output is removed
    sys.exit(128 + signum)


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``vpatient train ARGV`` as this process's rank (or alone, without torchrun); exits with the command's code."""
    from vpatient.cli import app
    from vpatient.errors import VPatientError
    from vpatient.train.data import SINGLE_PROCESS
    from vpatient.train.distributed import LOST_CONTACT, LostContactError, process_group, record_rank_error

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    leading = [a for a in args if a in _LEADING]
    args = [*leading, "train", *(a for a in args if a not in _LEADING)]
    signal.signal(signal.SIGTERM, _stop)
    rank = SINGLE_PROCESS
    try:
        with process_group() as rank:
            app(args=args, prog_name="python -m vpatient.train")
    except (VPatientError, FileNotFoundError, PermissionError, torch.distributed.DistError) as exc:
        if debug:
            raise
        # a collective in the backward pass (DistributedDataParallel's) fails as torch's own error
        lost = isinstance(exc, (LostContactError, torch.distributed.DistError))
        message = (
            f"{LOST_CONTACT}: {str(exc).strip().splitlines()[0]}" if isinstance(exc, torch.distributed.DistError) else str(exc)
        )
        who = f" (rank {rank.index} of {rank.world})" if rank.world > 1 else ""
        record_rank_error(message, lost_contact=lost)
        typer.secho(f"error{who}: {message}", err=True, fg="red")
        sys.exit(1)


if __name__ == "__main__":
    main()
