"""The ``vpatient`` command line. Each command is a thin call into the library.

Errors vpatient raises on purpose (bad input, missing files) are printed as one clear
message with exit code 1, never as a stack trace; ``--debug`` shows the trace.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from vpatient.atomic import staged_dir, staged_file, write_text_atomic
from vpatient.benchmarks.cli import benchmark_app
from vpatient.benchmarks.options import (
    DEFAULT_MEMBERS,
    IN_TIME_UNIT,
    ConfigOption,
    FormatOption,
    MembersOption,
    ModelOption,
    PatientDataOption,
    SeedOption,
    SettingsFileOption,
)
from vpatient.dashboard.command import dashboard_command
from vpatient.errors import ConfigError, OptionError, Problem, RecordValidationError, VPatientError, choose
from vpatient.report.cli import report_app
from vpatient.simulation.cli import (
    OutFormatOption,
    OverwriteOutOption,
    PredictionsOutOption,
    check_predictions_out,
    simulate_app,
    trial_app,
    warn_if_extrapolated,
    whatif_command,
    write_predictions_out,
)
from vpatient.task_cli import predict_command, task_app
from vpatient.version import __version__

app = typer.Typer(help="vpatient: a virtual-patient disease-progression simulator.", no_args_is_help=True, add_completion=False)
datasets_app = typer.Typer(help="Embedded datasets: list, summarise, export to MEDS or FHIR.", no_args_is_help=True)
schemas_app = typer.Typer(help="JSON Schemas of the input and output types.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(schemas_app, name="schemas")
app.add_typer(benchmark_app, name="benchmark")
app.add_typer(simulate_app, name="simulate")
app.add_typer(report_app, name="report")
app.add_typer(trial_app, name="trial")
app.add_typer(task_app, name="task")
app.command("predict")(predict_command)
app.command("whatif")(whatif_command)
app.command("dashboard")(dashboard_command)

log = logging.getLogger("vpatient")

NprocOption = Annotated[
    int | None,
    typer.Option(
        "--nproc",
        min=1,
        help="Data-parallel training processes on this machine (torchrun standalone); for several machines "
        "run `torchrun ... -m vpatient.train` with these options (docs/training-at-scale.md).",
    ),
]
WorkersOption = Annotated[
    int | None, typer.Option("--workers", min=1, help="Members trained at once, one process each (default: one per core).")
]


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

    infos = list_datasets()
    width = max(len(info.name) for info in infos)
    for info in infos:
        typer.echo(f"{info.name:<{width}} {info.description}")


@datasets_app.command("show")
def datasets_show(
    name: Annotated[str, typer.Argument(help="Embedded dataset name (pbc2, synthetic, synthetic-daily) or a MEDS or FHIR path.")],
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


#: synthetic exports of this many subjects and more are streamed (datasets export --stream), a shard per STREAM_SHARD
STREAM_EXPORT_FROM, STREAM_SHARD = 10_000, 2_000


@datasets_app.command("export")
def datasets_export(
    name: Annotated[str, typer.Argument(help="Embedded dataset name or a MEDS or FHIR path.")],
    out: Annotated[
        Path, typer.Argument(help="Directory to write the dataset to (with --format fhir, a .json file gets one Bundle).")
    ],
    config: ConfigOption = None,
    seed: SeedOption = 0,
    n: Annotated[int | None, typer.Option(help="Subjects to generate (synthetic only).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing non-empty directory.")] = False,
    data_format: FormatOption = "meds",
    meds_extension: Annotated[
        str | None,
        typer.Option(
            "--meds-extension",
            help="'numeric-time': write vpatient's older layout instead of standard MEDS. It departs from the "
            "MEDS standard (float64 values, float times since index, str ids), so other MEDS tools may refuse it.",
        ),
    ] = None,
    stream: Annotated[
        bool | None,
        typer.Option(
            "--stream/--no-stream",
            help="synthetic as standard MEDS only: draw and write the cohort chunk by chunk (synthetic_stream, one shard "
            f"per {STREAM_SHARD:,} subjects), with memory bounded by a chunk. Default: from --n {STREAM_EXPORT_FROM:,} on. "
            "Streamed cohorts are other draws than one cohort of the same size and seed.",
        ),
    ] = None,
) -> None:
    """Write a dataset as standard MEDS (data shards, codes, splits, dataset.json, and its vpatient config), or as FHIR."""
    from vpatient.data.formats import DataFormat, write_records
    from vpatient.data.meds.codes import NUMERIC_TIME_EXTENSION
    from vpatient.datasets import load_dataset

    fmt = choose(DataFormat, data_format, "--format")
    if meds_extension not in (None, NUMERIC_TIME_EXTENSION):
        raise typer.BadParameter(f"unknown extension {meds_extension!r}; the one there is: {NUMERIC_TIME_EXTENSION}")
    if meds_extension is not None and fmt != DataFormat.MEDS:
        raise typer.BadParameter("--meds-extension applies to --format meds only", param_hint="--meds-extension")
    # -- streamed synthetic export (issue 15)
    streamable = name == "synthetic" and fmt == DataFormat.MEDS and meds_extension is None
    if stream and not streamable:
        raise typer.BadParameter("--stream writes the synthetic dataset as standard MEDS only", param_hint="--stream")
    if streamable and (stream or (stream is None and (n or 0) >= STREAM_EXPORT_FROM)):
        from vpatient.data.meds.stream_write import write_meds_stream
        from vpatient.data.synthetic import synthetic_config, synthetic_stream

        # drawn 1,000 at a time: the generator's own arrays for 5,000 cost more memory (and time) than the shard's
        records = synthetic_stream(n or 500, seed, chunk_size=1000)
        path, count = write_meds_stream(records, synthetic_config(), out, subjects_per_shard=STREAM_SHARD, overwrite=overwrite)
        typer.echo(f"wrote {count} subjects of synthetic (streamed, {STREAM_SHARD:,} a shard) as standard MEDS to {path}")
        return
    cohort = load_dataset(name, config, seed=seed, n=n)
    standard = meds_extension is None
    path = write_records(cohort.records, cohort.config, out, fmt, overwrite=overwrite, standard=standard)
    if fmt == DataFormat.FHIR:
        layout = "FHIR"
    else:
        layout = "standard MEDS" if standard else f"MEDS with the {meds_extension} extension (not standard MEDS)"
    typer.echo(f"wrote {len(cohort.records)} subjects of {cohort.name} as {layout} to {path}")


# --------------------------------------------------------------------------- validate


@app.command()
def validate(
    path: Annotated[Path, typer.Argument(help="MEDS or FHIR file or directory, or JSON patient record(s).")],
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


# --------------------------------------------------------------------------- model


@app.command()
def train(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Checkpoint directory to write.")],
    data: Annotated[str, typer.Option(help="pbc2, synthetic, or a MEDS or FHIR path.")] = "pbc2",
    config: ConfigOption = None,
    settings_file: SettingsFileOption = None,
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs; early stopping usually ends sooner.")] = 400,
    learning_rate: Annotated[float, typer.Option(help="AdamW learning rate.")] = 3e-3,
    batch_size: Annotated[int, typer.Option(min=1, help="Patients per optimiser step.")] = 64,
    patience: Annotated[int, typer.Option(min=1, help="Epochs without validation improvement before training stops.")] = 40,
    max_minutes: Annotated[
        float | None,
        typer.Option(
            help="Wall-clock limit: stop at the end of the epoch that passes it, keeping the best weights.",
        ),
    ] = None,
    latent_dim: Annotated[
        int | None,
        typer.Option(min=1, help="Dimension of the latent disease state (default: the model's, ModelSettings.latent_dim)."),
    ] = None,
    step: Annotated[
        float | None,
        typer.Option(
            help="ODE solver step as a fraction of the time scale (the median gap between visits); default ModelSettings.step."
        ),
    ] = None,
    members: MembersOption = DEFAULT_MEMBERS,
    workers: WorkersOption = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1, help="torch threads for training (default: 1 on 2 cores or fewer, else all but one; members share the cores)."
        ),
    ] = None,
    seed: SeedOption = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    nproc: NprocOption = None,
    stream: Annotated[
        bool | None,
        typer.Option(
            "--stream/--no-stream",
            help="MEDS directories: read the shards batch by batch instead of holding the cohort (memory bounded by "
            f"--buffer-patients). Default: streamed above {STREAM_TRAIN_ROWS:,} MEDS rows, in memory below.",
        ),
    ] = None,
    buffer_patients: Annotated[
        int | None,
        typer.Option(min=1, help="Streamed training: patients shuffled together, a buffer of whole batches (default 16,384)."),
    ] = None,
) -> None:
    """Train the world model (an ensemble of --members) and write a checkpoint directory (weights, config, scalers, metrics)."""
    # -- data-parallel training (vpatient.train.distributed): --nproc launches the ranks, which run this command again
    from vpatient.train.distributed import command_line_args, current_rank, launch_local, launched_by_torchrun

    if nproc is not None and launched_by_torchrun():
        raise OptionError("--nproc starts the training processes itself; under torchrun leave it out")
    if nproc is not None and nproc > 1:
        if workers is not None:
            raise OptionError("--workers trains ensemble members side by side, --nproc each member by N processes: choose one")
        verbose = bool(ctx.find_root().params.get("verbose"))
        launch_local(nproc, command_line_args(ctx, leave_out=("nproc",)), verbose=verbose)
        return
    rank = current_rank()  # this process's place among the ranks (one process: 0 of 1)
    # --
    from vpatient.datasets import load_dataset
    from vpatient.train import layered_settings
    from vpatient.virtual_patient import VirtualPatientModel

    options = {
        "epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size, "patience": patience,
        "max_minutes": max_minutes, "latent_dim": latent_dim, "step": step, "members": members, "threads": threads, "seed": seed,
    }  # fmt: skip
    options = {name: value for name, value in options.items() if value is not None}  # None: the settings' own default
    # by name: typer ships its own copy of click, whose ParameterSource is not click's
    given = {
        name: value for name, value in options.items() if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
    }
    # precedence: the command line, then the file, then these options' defaults
    settings, model_settings = layered_settings(settings_file, options, given)
    if _streams(data, stream):
        _train_streamed(data, out, config, settings, model_settings, progress, workers, buffer_patients, rank)
        return
    cohort = load_dataset(data, config, seed=settings.seed)
    started = time.perf_counter()
    model = VirtualPatientModel.fit(
        cohort.records, cohort.config, settings, model_settings, progress=progress, workers=workers, rank=rank
    )
    if rank.index != 0:  # rank 0 alone writes the checkpoint
        return
    model.data_source = data
    from vpatient.simulation import Simulator

    # staged beside --out and renamed into place: a killed run leaves the previous checkpoint or none
    with staged_dir(out, marker="model.json") as staging:
        model.save(staging)
        Simulator(model, model_dir=staging).fit_population(cohort.records, seed=settings.seed)
    typer.echo(f"{_training_summary(model, time.perf_counter() - started)}; wrote {out}")


# -- streamed training (issue 15)

#: MEDS directories of more rows than this train streamed unless told (--stream/--no-stream); ~20,000 synthetic patients
STREAM_TRAIN_ROWS = 2_000_000
#: training patients a streamed run keeps as records for the population model (a uniform sample of all subjects)
POPULATION_SAMPLE = 2000


def _streams(data: str, stream: bool | None) -> bool:
    """Whether ``vpatient train --data DATA`` streams: as told, else a MEDS directory of more than STREAM_TRAIN_ROWS rows."""
    from vpatient.data.formats import DataFormat, format_of

    path = Path(data)
    meds_dir = path.is_dir() and (path / "data").is_dir() and format_of(path) == DataFormat.MEDS
    if stream and not meds_dir:
        raise typer.BadParameter(f"{data} is not a MEDS directory; --stream reads MEDS shards", param_hint="--stream")
    if stream is not None or not meds_dir:
        return bool(stream)
    import pyarrow.parquet as pq

    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in (path / "data").rglob("*.parquet"))  # footers only
    return rows > STREAM_TRAIN_ROWS


def _train_streamed(data, out, config, settings, model_settings, progress, workers, buffer_patients, rank) -> None:
    """``vpatient train`` on MEDS shards read batch by batch; the population model learns from a sample of the subjects.

    With several ranks each parses the shards into its own cache (no shared folder is
    assumed between machines) and trains on its own part of them; rank 0 alone writes.
    """
    from vpatient.data.formats import stored_config
    from vpatient.schemas import DatasetConfig
    from vpatient.simulation import Simulator
    from vpatient.train.shard_cache import ShardCache
    from vpatient.train.stream import DEFAULT_BUFFER_PATIENTS
    from vpatient.virtual_patient import VirtualPatientModel

    cfg = DatasetConfig.load(config) if config is not None else stored_config(data)
    if cfg is None:
        raise ConfigError(f"{data} carries no vpatient config: pass one with --config CONFIG.json")
    started = time.perf_counter()
    with ShardCache.temporary(data, cfg, sample_patients=POPULATION_SAMPLE, seed=settings.seed) as cache:
        buffer = buffer_patients or DEFAULT_BUFFER_PATIENTS
        model = VirtualPatientModel.fit_streamed(cache, cfg, settings, model_settings, progress, workers, buffer, rank=rank)
        sample = cache.sample()
    if rank.index != 0:  # rank 0 alone writes the checkpoint
        return
    model.data_source = data
    with staged_dir(out, marker="model.json") as staging:
        model.save(staging)
        Simulator(model, model_dir=staging).fit_population(sample, seed=settings.seed)
    typer.echo(
        f"{_training_summary(model, time.perf_counter() - started)}; streamed from {len(cache)} subjects "
        f"(population model from a sample of {len(sample)}); wrote {out}"
    )


def _training_summary(model, seconds: float) -> str:
    """How the model was trained (members, patients, best epochs, wall time), whether the time limit stopped it, and any warnings."""
    h = model.history
    histories = model.member_histories or [h]
    if model.n_members == 1:
        line = f"trained on {h.n_train} patients (and {h.n_validation} more for early stopping) in {seconds:.0f} s; best epoch {h.best_epoch}"
    else:
        best = ", ".join(str(m.best_epoch) for m in histories)
        line = (
            f"trained {model.n_members} members, each on a bootstrap resample of {h.n_train} patients "
            f"(and {h.n_validation} held out for early stopping), in {seconds:.0f} s; best epochs {best}"
        )
    on_time = sum(m.stopped_on_time for m in histories)
    if on_time:
        limit = model.train_settings.max_minutes if model.train_settings else None
        whom = "" if model.n_members == 1 else f" ({on_time} of {model.n_members} members)"
        line += f"; stopped on time at the {limit:g}-minute limit{whom}, keeping the best weights"
    warnings = list(dict.fromkeys(w for m in histories for w in m.warnings))  # members often share one
    return line + "".join(f"\nWARNING: {w}" for w in warnings)


@app.command()
def forecast(
    model: ModelOption,
    patient: Annotated[str, typer.Option("--patient", help="Subject id.")],
    until: Annotated[float | None, typer.Option(help=f"Forecast from this time, {IN_TIME_UNIT}; default the last visit.")] = None,
    horizon: Annotated[
        float | None,
        typer.Option(
            help=f"How far to forecast beyond --until, {IN_TIME_UNIT}; default the config's horizon, "
            "else the training data's median follow-up."
        ),
    ] = None,
    data: PatientDataOption = None,
    config: ConfigOption = None,
    n_samples: Annotated[int, typer.Option(help="Posterior sample paths.")] = 200,
    seed: SeedOption = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the forecast tables as JSON.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of the forecast.")] = None,
    out: PredictionsOutOption = None,
    out_format: OutFormatOption = None,
    overwrite: OverwriteOutOption = False,
) -> None:
    """Forecast one patient: per variable the predictive median and 5/95% quantiles, and survival per event kind."""
    from vpatient.tables import markdown_table
    from vpatient.virtual_patient import VirtualPatientModel

    check_predictions_out(out, out_format, overwrite)
    vpm = VirtualPatientModel.load(model)
    cohort = vpm.patients(data, config, seed)
    record = cohort.subject(patient)
    horizon = vpm.default_horizon if horizon is None else horizon
    result = vpm.forecast(record, until=until, horizon=horizon, n_samples=n_samples, seed=seed)
    warn_if_extrapolated(vpm, result.until + horizon, cohort if data is None else None)
    summary = result.summary()
    survival = result.survival_summary()
    # Six rows per variable: the forecast time and every fifth of the horizon (yearly for 5 years), at their grid points.
    shown = result.milestones()
    future = summary[summary["time"].isin(shown)]
    unit = vpm.time_unit
    typer.echo(
        f"subject {patient}: forecast from t = {result.until:.2f} {unit}, horizon {horizon:g} {unit}, {n_samples} posterior samples"
    )
    typer.echo(markdown_table(future[["time", "variable", "median", "q05", "q95"]], index=False))
    surv = survival[survival["time"].isin(future["time"].unique())]
    typer.echo(markdown_table(surv[["time", "event", "survival", "survival_q05", "survival_q95"]], index=False))
    if json_out is not None:
        write_text_atomic(
            json_out,
            json.dumps(
                {
                    "subject_id": patient,
                    "until": result.until,
                    "n_samples": n_samples,
                    "seed": seed,
                    "variables": summary.to_dict(orient="records"),
                    "survival": survival.to_dict(orient="records"),
                },
                indent=1,
            ),
        )
        typer.echo(f"wrote {json_out}")
    if plot is not None:
        from vpatient.plots import plot_forecast

        with staged_file(plot) as staging:
            plot_forecast(result, record).savefig(staging, dpi=110, bbox_inches="tight")
        typer.echo(f"wrote {plot}")
    write_predictions_out(result, record, vpm, out, out_format, overwrite)


@app.command()
def recommend(
    model: ModelOption,
    patient: Annotated[str, typer.Option("--patient", help="Subject id in the model's dataset (or --data).")],
    at: Annotated[float | None, typer.Option(help=f"Decision time, {IN_TIME_UNIT}; default the end of follow-up.")] = None,
    target: Annotated[
        str | None,
        typer.Option(
            help=f"latent, risk:<event>:<horizon> or forecast:<variable>:<horizon>; horizon {IN_TIME_UNIT}. "
            "Default: risk of death (else the first event) within the model's default horizon."
        ),
    ] = None,
    budget: Annotated[float | None, typer.Option(help="Cost budget of the greedy sequence (default: no limit).")] = None,
    min_gain_per_cost: Annotated[float, typer.Option(help="Stop the sequence below this gain per cost (nats).")] = 0.0,
    data: PatientDataOption = None,
    config: ConfigOption = None,
    n_samples: Annotated[int, typer.Option(min=16, help="Posterior samples (outer and inner Monte Carlo).")] = 256,
    seed: SeedOption = 0,
    json_flag: Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of tables.")] = False,
) -> None:
    """Which test next? Tests ranked by expected information gain about the target, per unit cost."""
    from vpatient.policy import Target
    from vpatient.policy import recommend as rank_tests
    from vpatient.tables import markdown_table
    from vpatient.virtual_patient import VirtualPatientModel

    vpm = VirtualPatientModel.load(model)
    record = vpm.patients(data, config).subject(patient)
    if target is None:
        events = vpm.config.event_kinds
        target = f"risk:{'death' if 'death' in events else events[0]}:{vpm.default_horizon:g}" if events else "latent"
    chosen = Target.parse(target, vpm.config)
    result = rank_tests(vpm, record, chosen, at, n_samples, seed, budget, min_gain_per_cost)
    if json_flag:
        typer.echo(json.dumps(result.to_dict(), indent=1))
        return
    typer.echo(
        f"subject {patient} at t = {result.at:.2f} {vpm.time_unit}; target {result.target}; {n_samples} posterior samples "
        f"(effective {result.effective_sample_size:.0f}), seed {seed}; EIG in nats with its Monte Carlo standard error"
    )
    typer.echo(markdown_table(result.table(), index=False))
    if result.sequence:
        import pandas as pd

        typer.echo("\nGreedy order (marginal gain per cost, given the tests before it):")
        typer.echo(markdown_table(pd.DataFrame(result.sequence), index=False))


# --------------------------------------------------------------------------- demo


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Directory for the demo's outputs.")] = Path("demo_output"),
    epochs: Annotated[int, typer.Option(help="Most training epochs (early stopping usually ends sooner).")] = 400,
    patient: Annotated[str, typer.Option(help="Subject whose forecast is plotted.")] = "4",
    members: MembersOption = DEFAULT_MEMBERS,
    seed: SeedOption = 0,
) -> None:
    """The main job on the embedded PBC data: summary, Kaplan-Meier by arm, a trained model, a forecast, a what-if, the trial in silico."""
    from vpatient.data.summary import summarize
    from vpatient.datasets import load_dataset
    from vpatient.model.latent_ode import ModelSettings
    from vpatient.plots import plot_forecast, plot_km_by_arm
    from vpatient.train import TrainSettings
    from vpatient.virtual_patient import VirtualPatientModel

    out.mkdir(parents=True, exist_ok=True)
    cohort = load_dataset("pbc2", seed=seed)
    summary = summarize(cohort)
    typer.echo(summary.to_markdown())
    (out / "pbc2_summary.md").write_text(summary.to_markdown(), encoding="utf-8")
    ax = plot_km_by_arm(cohort, event="death")
    ax.figure.savefig(out / "pbc2_km_by_arm.png", dpi=120, bbox_inches="tight")
    typer.echo(f"training the world model on PBC, an ensemble of {members} (a few minutes on 2 cores) ...")
    started = time.perf_counter()
    model = VirtualPatientModel.fit(
        cohort.records, cohort.config, TrainSettings(epochs=epochs, seed=seed, members=members), ModelSettings()
    )
    model.data_source = "pbc2"
    model.save(out / "pbc2_model")
    typer.echo(f"{_training_summary(model, time.perf_counter() - started)}; checkpoint in {out / 'pbc2_model'}")
    record = cohort.subject(patient)
    until = record.visit_times()[len(record.visit_times()) // 2]
    result = model.forecast(record, until=until, horizon=5.0, n_samples=200, seed=seed)
    plot_forecast(result, record).savefig(out / f"pbc2_forecast_patient{patient}.png", dpi=110, bbox_inches="tight")
    typer.echo(f"wrote {out / 'pbc2_summary.md'}, {out / 'pbc2_km_by_arm.png'} and {out / f'pbc2_forecast_patient{patient}.png'}")
    _demo_simulation(model, cohort, record, until, out, seed)


def _demo_simulation(model, cohort, record, until: float, out: Path, seed: int) -> None:
    """The simulator on PBC: one patient's what-if, and the trial replayed in silico on its own patients."""
    from vpatient.plots import plot_trial, plot_whatif
    from vpatient.schemas import TreatmentExposure, TreatmentPlan
    from vpatient.simulation import Simulator
    from vpatient.tables import markdown_table

    sim = Simulator(model, model_dir=out / "pbc2_model")
    sim.fit_population(cohort.records, seed=seed)
    placebo = TreatmentPlan(name="placebo", description="no D-penicillamine")
    drug = TreatmentPlan(name="D-penicillamine", exposures=[TreatmentExposure(treatment="d_penicillamine", start=0.0, dose=1.0)])
    whatif = sim.whatif(record, [placebo, drug], horizon=5.0, n_samples=200, seed=seed, at=until)
    plot_whatif(whatif).savefig(out / f"pbc2_whatif_patient{record.subject_id}.png", dpi=110, bbox_inches="tight")
    effects = whatif.effects()
    table = markdown_table(effects[effects["horizon"] == 5.0].drop(columns=["subject_id", "reference", "kind"]), index=False)
    (out / f"pbc2_whatif_patient{record.subject_id}.md").write_text(table + "\n", encoding="utf-8")
    typer.echo(f"what-if for subject {record.subject_id} from t = {until:.2f}: D-penicillamine - placebo at 5 years\n{table}")
    typer.echo("replaying the PBC trial in silico on its own patients at enrolment ...")
    trial = sim.trial(
        {"placebo": placebo, "D-penicillamine": drug}, population=cohort.records, years=10.0, seed=seed,
        draws_per_record=5, out=out / "pbc2_trial", progress=False,
    )  # fmt: skip
    plot_trial(trial, out / "pbc2_trial" / "trial.png")
    typer.echo(trial.to_markdown())
    typer.echo(f"wrote {out / 'pbc2_trial'} (trial.md, trial.png, tables) and the what-if plot")


# --------------------------------------------------------------------------- entry


def run() -> None:
    """Console-script entry: the app, with vpatient's errors shown as messages."""
    from vpatient.atomic import unwind_on_sigterm

    unwind_on_sigterm()  # a stopped command removes its staged output and temporary folders, as after Ctrl-C
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
