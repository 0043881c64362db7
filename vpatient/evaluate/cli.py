"""``vpatient benchmark``: named benchmarks, the peers side by side on the same splits.

A typer sub-app; the main CLI mounts it with ``app.add_typer(benchmark_app, name="benchmark")``.
Each command is a thin call into :mod:`vpatient.evaluate`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from vpatient.evaluate.forecast_benchmark import run_forecast_benchmark, write_forecast_results
from vpatient.evaluate.protocol import DEFAULT_EVENT, DEFAULT_MAX_MISSING
from vpatient.evaluate.registry import METHODS, PEERS

__all__ = ["METHODS", "benchmark_app", "benchmark_forecast"]

log = logging.getLogger(__name__)

benchmark_app = typer.Typer(
    help="Benchmarks: every method on the same folds, results as JSON and markdown.", no_args_is_help=True
)


@benchmark_app.callback()
def _benchmark() -> None:
    """Run a named benchmark (a group even with one command, so `vpatient benchmark forecast` stays stable)."""


def _methods(spec: str) -> dict:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise typer.BadParameter(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(METHODS)}", param_hint="--methods"
        )
    return {n: METHODS[n] for n in names}


@benchmark_app.command("forecast")
def benchmark_forecast(
    data: Annotated[str, typer.Option("--data", help="Embedded dataset (pbc2, synthetic) or a MEDS path.")],
    config: Annotated[Path | None, typer.Option("--config", help="Dataset config (JSON or YAML) for MEDS paths.")] = None,
    folds: Annotated[int, typer.Option("--folds", min=2, help="Cross-validation folds over subjects.")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fold split (and of generated data).")] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="JSON result path (default OUT_DIR/forecast-<data>.json).")
    ] = None,
    predictions: Annotated[
        Path | None, typer.Option("--predictions", help="Write every predicted cell to this parquet file.")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Directory of the JSON and markdown results.")] = Path(
        "benchmarks/results"
    ),
    methods: Annotated[str, typer.Option("--methods", help=f"Comma-separated methods; known: {', '.join(METHODS)}.")] = ",".join(
        ("vpatient", *PEERS)
    ),
    max_missing: Annotated[
        float, typer.Option("--max-missing", help="Leave out continuous variables missing at more than this share of visits.")
    ] = DEFAULT_MAX_MISSING,
    event: Annotated[str, typer.Option("--event", help="Event kind whose risk is scored.")] = DEFAULT_EVENT,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Per-fold progress bar on stderr.")] = True,
) -> None:
    """Forecast later visits from the first half of each test subject's visits, and death risk at fixed landmarks."""
    from vpatient.datasets import load_dataset

    chosen = _methods(methods)
    cohort = load_dataset(data, config, seed=seed)
    truth = getattr(cohort, "truth", None)
    if truth is not None:  # synthetic data: score the ground truth too, as the noise floor
        from vpatient.evaluate.oracle import SyntheticOracle

        chosen["truth"] = lambda: SyntheticOracle(truth)
    result, table = run_forecast_benchmark(
        cohort, chosen, n_folds=folds, seed=seed, max_missing=max_missing, event=event, progress=progress
    )
    paths = write_forecast_results(result, table, out_dir, json_path=json_out, predictions_path=predictions)
    typer.echo(result.to_markdown())
    for kind, path in paths.items():
        typer.echo(f"wrote {kind}: {path}", err=True)


@benchmark_app.command("training")
def benchmark_training(
    data: Annotated[str, typer.Option("--data", help="Embedded dataset (pbc2, synthetic) or a MEDS path.")] = "pbc2",
    config: Annotated[Path | None, typer.Option("--config", help="Dataset config (JSON or YAML) for MEDS paths.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Training seed.")] = 0,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Directory of the JSON and markdown results.")] = Path(
        "benchmarks/results"
    ),
) -> None:
    """Time the training of the world model (default settings) on all of a dataset."""
    from vpatient.datasets import load_dataset
    from vpatient.evaluate.training_benchmark import run_training_benchmark, write_training_result

    result, _ = run_training_benchmark(load_dataset(data, config, seed=seed), seed=seed)
    paths = write_training_result(result, out_dir)
    typer.echo(result.to_markdown())
    for path in paths:
        typer.echo(f"wrote {path}", err=True)


def _mount(command, name: str) -> None:
    benchmark_app.command(name)(command)


from vpatient.evaluate.cohort_fidelity_benchmark import benchmark_cohort_fidelity  # noqa: E402
from vpatient.evaluate.counterfactual_benchmark import benchmark_counterfactual  # noqa: E402
from vpatient.evaluate.pbc_trial_benchmark import benchmark_pbc_trial  # noqa: E402
from vpatient.evaluate.simulate_speed_benchmark import benchmark_simulate_speed  # noqa: E402
from vpatient.evaluate.test_selection_benchmark import benchmark_test_selection  # noqa: E402

_mount(benchmark_counterfactual, "counterfactual")
_mount(benchmark_pbc_trial, "pbc-trial")
_mount(benchmark_cohort_fidelity, "cohort-fidelity")
_mount(benchmark_simulate_speed, "simulate-speed")
_mount(benchmark_test_selection, "test-selection")
