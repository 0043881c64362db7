"""The ``vpatient`` command line. Each command is a thin call into the library.

Errors vpatient raises on purpose (bad input, missing files) are printed as one clear
message with exit code 1, never as a stack trace; ``--debug`` shows the trace.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from vpatient import __version__
from vpatient.errors import Problem, RecordValidationError, VPatientError

app = typer.Typer(help="vpatient: a virtual-patient disease-progression simulator.", no_args_is_help=True, add_completion=False)
datasets_app = typer.Typer(help="Embedded datasets: list, summarise, export to MEDS.", no_args_is_help=True)
schemas_app = typer.Typer(help="JSON Schemas of the input and output types.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(schemas_app, name="schemas")

log = logging.getLogger("vpatient")

SeedOption = Annotated[int, typer.Option(help="Random seed; the same seed gives the same numbers.")]
ConfigOption = Annotated[Path | None, typer.Option("--config", help="Dataset config (JSON or YAML) for MEDS paths.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vpatient {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


# --------------------------------------------------------------------------- datasets


@datasets_app.command("list")
def datasets_list() -> None:
    """List the embedded datasets (they need no download)."""
    from vpatient.datasets import list_datasets

    for info in list_datasets():
        typer.echo(f"{info.name:<10} {info.description}")


@datasets_app.command("show")
def datasets_show(
    name: Annotated[str, typer.Argument(help="Embedded dataset name (pbc2, synthetic) or a MEDS path.")],
    config: ConfigOption = None,
    seed: SeedOption = 0,
    n: Annotated[int | None, typer.Option(help="Subjects to generate (synthetic only).")] = None,
) -> None:
    """Summarise a cohort: subjects, visits, missingness per variable, events, arms."""
    from vpatient.data.summary import summarize
    from vpatient.datasets import load_dataset

    cohort = load_dataset(name, config, seed=seed, n=n)
    typer.echo(summarize(cohort).to_markdown())
    if cohort.citation:
        typer.echo(f"Cite: {cohort.citation}")


@datasets_app.command("export")
def datasets_export(
    name: Annotated[str, typer.Argument(help="Embedded dataset name or a MEDS path.")],
    out: Annotated[Path, typer.Argument(help="Directory to write the MEDS dataset to.")],
    config: ConfigOption = None,
    seed: SeedOption = 0,
    n: Annotated[int | None, typer.Option(help="Subjects to generate (synthetic only).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing non-empty directory.")] = False,
) -> None:
    """Write a dataset as a MEDS directory (data shards, codes, splits, and its vpatient config)."""
    from vpatient.data.meds import write_meds
    from vpatient.datasets import load_dataset

    cohort = load_dataset(name, config, seed=seed, n=n)
    path = write_meds(cohort.records, cohort.config, out, overwrite=overwrite)
    typer.echo(f"wrote {len(cohort.records)} subjects of {cohort.name} as MEDS to {path}")


# --------------------------------------------------------------------------- validate


@app.command()
def validate(
    path: Annotated[Path, typer.Argument(help="MEDS file or directory, or JSON patient record(s).")],
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the problems as JSON.")] = False,
) -> None:
    """Check input data against a dataset config and list every problem at once.

    Exit code 0 when the data are valid (warnings allowed), 1 when any error is found.
    """
    from vpatient.validation import validate_path

    report = validate_path(path, config)
    if as_json:
        typer.echo(json.dumps([_problem_json(p) for p in report.problems], indent=2))
    else:
        for p in report.problems:
            typer.echo(f"{p.severity}: {p}")
        typer.echo(report.headline())
    raise typer.Exit(1 if report.errors else 0)


def _problem_json(p: Problem) -> dict:
    return {"severity": p.severity, "subject_id": p.subject_id, "field": p.field, "value": repr(p.value), "message": p.message}


# --------------------------------------------------------------------------- schemas


@schemas_app.command("export")
def schemas_export(
    out: Annotated[Path, typer.Argument(help="Directory for the schemas (the repository keeps them in data_schemas/).")],
    check: Annotated[bool, typer.Option(help="Write nothing; exit 1 if the files there differ from the models.")] = False,
) -> None:
    """Export the JSON Schema of every boundary type, with a valid example of each."""
    from vpatient.schema_export import drifted_files, export_schemas

    if check:
        drifted = drifted_files(out)
        for rel in drifted:
            typer.echo(f"out of date: {out / rel}")
        if drifted:
            typer.echo(f"run: vpatient schemas export {out}")
        raise typer.Exit(1 if drifted else 0)
    written = export_schemas(out)
    typer.echo(f"wrote {len(written)} files to {out}")


# --------------------------------------------------------------------------- demo


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Directory for the demo's outputs.")] = Path("demo_output"),
    seed: SeedOption = 0,
) -> None:
    """The main job on the embedded PBC data: summary and Kaplan-Meier plot by arm."""
    from vpatient.data.summary import summarize
    from vpatient.datasets import load_dataset
    from vpatient.plots import plot_km_by_arm

    out.mkdir(parents=True, exist_ok=True)
    cohort = load_dataset("pbc2", seed=seed)
    summary = summarize(cohort)
    typer.echo(summary.to_markdown())
    (out / "pbc2_summary.md").write_text(summary.to_markdown(), encoding="utf-8")
    ax = plot_km_by_arm(cohort, event="death")
    ax.figure.savefig(out / "pbc2_km_by_arm.png", dpi=120, bbox_inches="tight")
    typer.echo(f"wrote {out / 'pbc2_summary.md'} and {out / 'pbc2_km_by_arm.png'}")


# --------------------------------------------------------------------------- entry


def run() -> None:
    """Console-script entry: the app, with vpatient's errors shown as messages."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        app()  # standalone: typer itself reports usage errors and exits with the command's code
    except (VPatientError, FileNotFoundError, PermissionError) as exc:
        if debug:
            raise
        text = str(exc) if isinstance(exc, RecordValidationError) else f"error: {exc}"
        typer.secho(text, err=True, fg="red")
        sys.exit(1)


if __name__ == "__main__":
    run()
