"""Time and peak memory of reading a FHIR Bulk Data export (``iter_fhir``), for the issue-14 scale target.

Writes ``N`` synthetic patients (:func:`~vpatient.data.synthetic.synthetic_stream`, streamed) as FHIR
Bulk Data NDJSON with :func:`~vpatient.data.fhir.write_fhir` into ``--out`` unless it is there
already, then streams them back with :func:`~vpatient.data.fhir.iter_fhir` and prints the
patients, resources, input size, seconds and peak resident memory of this process (and of the
worker processes, with ``--workers``):

    PYTHONPATH=. nice -n 19 env OMP_NUM_THREADS=1 python scripts/fhir_read_speed.py 100000 --out /tmp/fhir100k
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from vpatient.data.fhir import FhirLayout, iter_fhir, write_fhir
from vpatient.data.synthetic import synthetic_config, synthetic_stream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, nargs="?", default=100_000, help="synthetic patients")
    parser.add_argument("--out", type=Path, required=True, help="the export's folder (written first when absent)")
    parser.add_argument("--workers", type=int, default=1, help="processes checking the resources")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = synthetic_config()
    if not args.out.exists():
        started = time.perf_counter()
        write_fhir(synthetic_stream(args.n, args.seed), config, args.out, layout=FhirLayout.NDJSON)
        print(f"wrote {args.n:,} patients to {args.out} in {time.perf_counter() - started:.0f} s")
    files = sorted(args.out.glob("*.ndjson"))
    resources = sum(sum(1 for _ in f.open("rb")) for f in files)
    size = sum(f.stat().st_size for f in files)
    started = time.perf_counter()
    patients = sum(1 for _ in iter_fhir(args.out, config, workers=args.workers))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"read {patients:,} patients ({resources:,} resources, {size / 1e6:.0f} MB) in {seconds:.0f} s "
        f"({patients / seconds:.0f} patients/s) with {args.workers} worker(s); peak RSS {peak:.0f} MB"
        + (f", largest worker {workers:.0f} MB" if args.workers > 1 else "")
    )


if __name__ == "__main__":
    main()
