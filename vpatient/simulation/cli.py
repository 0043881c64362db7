"""``vpatient whatif``, ``vpatient simulate cohort|trial`` (thin calls into :class:`Simulator`) and ``vpatient trial adjust``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from vpatient.benchmarks.options import (
    IN_TIME_UNIT,
    CacheDirOption,
    ConfigOption,
    FormatOption,
    ModelOption,
    PatientDataOption,
    ProgressOption,
    SeedOption,
    TrialDataOption,
)
from vpatient.errors import RecordValidationError, VPatientError, choose
from vpatient.evaluate.fold_models import DEFAULT_CACHE

__all__ = [
    "OutFormatOption",
    "OverwriteOutOption",
    "PredictionsOutOption",
    "check_predictions_out",
    "simulate_app",
    "trial_app",
    "warn_if_extrapolated",
    "whatif_command",
    "write_predictions_out",
]

log = logging.getLogger(__name__)

simulate_app = typer.Typer(help="Virtual cohorts and in-silico trials from a trained model.", no_args_is_help=True)
trial_app = typer.Typer(help="Real randomised trials re-analysed with the world model's help.", no_args_is_help=True)

EngineOption = Annotated[str, typer.Option(help="local (this process) or dask (a Dask cluster).")]
CohortEngineOption = Annotated[
    str,
    typer.Option(
        help="auto (worker processes for large cohorts, else this process), local (this process), "
        "processes (--workers processes of this machine) or dask (a Dask cluster)."
    ),
]
SchedulerOption = Annotated[
    str | None, typer.Option(help="Dask scheduler address tcp://HOST:PORT (default: start a LocalCluster).")
]
WorkersOption = Annotated[
    int,
    typer.Option(
        "--workers", min=1, help="Worker processes of the processes engine, or of the LocalCluster the dask engine starts."
    ),
]
ChunkOption = Annotated[int, typer.Option(min=1, help="Patients per chunk (memory use grows with it).")]
# a forecast's or what-if's predictions as a file another system reads (today: FHIR)
PredictionsOutOption = Annotated[
    Path | None, typer.Option("--out", help="Also write the predictions to this file, in --format (e.g. forecast.fhir.json).")
]
OutFormatOption = Annotated[
    str | None,
    typer.Option(
        "--format", help="Format of --out: fhir (a FHIR R4B Bundle: a RiskAssessment per event, an Observation per lab and time)."
    ),
]
OverwriteOutOption = Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file.")]


def load_plan(path: Path, config) -> object:
    """A treatment plan from a JSON file, validated against the model's config."""
    from vpatient.inputs import read_json_file
    from vpatient.schemas import parse_plan

    if not path.is_file():
        raise VPatientError(f"plan file {path} does not exist")
    try:
        return parse_plan(read_json_file(path, "treatment plan"), config)
    except RecordValidationError as exc:
        raise RecordValidationError(exc.problems, header=f"invalid treatment plan {path}") from None


def load_arms(specs: list[str], config) -> dict:
    """Trial arms from ``--arm NAME=PLAN.json`` options: name -> validated plan, in the order given."""
    arms = {}
    for spec in specs:
        name, sep, path = (part.strip() for part in spec.partition("="))
        if not sep or not name or not path:
            raise VPatientError(f"--arm {spec!r}: expected NAME=PLAN.json, e.g. --arm placebo=plans/none.json")
        if name in arms:
            raise VPatientError(f"--arm {name!r} is given twice; arm names must be unique")
        arms[name] = load_plan(Path(path), config)
    return arms


def load_simulator(model: Path):
    """The simulator of a checkpoint; fits and saves its population model the first time."""
    from vpatient.simulation import Simulator

    try:
        sim = Simulator.load(model)
    except VPatientError as exc:
        if "population" not in str(exc):
            raise
        typer.echo(f"{exc}: refitting it", err=True)
        (model / "population.json").unlink()
        sim = Simulator.load(model)
    if sim.population is None:
        source = sim.model.dataset_name
        typer.echo(f"fitting the population model on {source} (once; saved in {model}) ...", err=True)
        sim.fit_population(sim.model.patients(source).records)
    return sim


def warn_if_extrapolated(vpm, end: float, training=None) -> None:
    """Print the patient report's warning when a forecast runs past the training data's follow-up (``training``: default, the model's)."""
    warning = vpm.followup_warning(end, training)
    if warning:
        typer.secho(f"WARNING: {warning}", err=True, fg="yellow")


def check_predictions_out(out: Path | None, fmt: str | None, overwrite: bool) -> None:
    """Refuse ``--out``/``--format`` before any work: a format without a file, an unknown format, a file that exists."""
    if out is None:
        if fmt is not None:
            raise typer.BadParameter("--format says how --out is written; give --out FILE as well", param_hint="--format")
        return
    _choice(fmt or "fhir", ("fhir",), "--format")
    from vpatient.report.fhir import check_output_file

    check_output_file(out, overwrite)


def write_predictions_out(result, record, model, out: Path | None, fmt: str | None, overwrite: bool) -> None:
    """``--out``/``--format``: the forecast or what-if written for other systems (FHIR), atomically."""
    check_predictions_out(out, fmt, overwrite)
    if out is None:
        return
    from vpatient.report.fhir import write_predictions_fhir

    write_predictions_fhir(result, record, model, out, overwrite=overwrite)
    typer.echo(f"wrote {out}", err=True)


def load_whatif(model: Path, plan: list[Path], patient: str, data: str | None, config: Path | None = None):
    """What a what-if command reads: the checkpoint's simulator, the plans (validated) and the patient's record.

    The patient comes from ``data`` (default: the model's dataset), read with ``config``
    when it is a MEDS path (else its own config, else the model's).
    """
    from vpatient.simulation import Simulator

    sim = Simulator.load(model)
    plans = [load_plan(p, sim.model.config) for p in plan]
    return sim, plans, sim.model.patients(data, config).subject(patient)


def whatif_command(
    model: ModelOption,
    patient: Annotated[str, typer.Option("--patient", help="Subject id in the model's dataset (or --data).")],
    plan: Annotated[
        list[Path], typer.Option("--plan", help="Treatment plan JSON; repeat for each plan. The first is the reference.")
    ],
    at: Annotated[float | None, typer.Option(help=f"Decision time, {IN_TIME_UNIT}; default the last visit.")] = None,
    horizon: Annotated[
        float | None,
        typer.Option(
            help=f"How far to simulate beyond --at, {IN_TIME_UNIT}; default the config's horizon, "
            "else the training data's median follow-up."
        ),
    ] = None,
    data: PatientDataOption = None,
    config: ConfigOption = None,
    n_samples: Annotated[int, typer.Option(min=1, help="Posterior sample paths.")] = 200,
    seed: SeedOption = 0,
    json_flag: Annotated[bool, typer.Option("--json", help="Print the full result as JSON instead of tables.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of the plans' forecasts and survival.")] = None,
    out: PredictionsOutOption = None,
    out_format: OutFormatOption = None,
    overwrite: OverwriteOutOption = False,
) -> None:
    """What if this patient were treated differently? Forecasts under each plan and the effects against the first."""
    from vpatient.tables import markdown_table

    check_predictions_out(out, out_format, overwrite)
    sim, plans, record = load_whatif(model, plan, patient, data, config)
    result = sim.whatif(record, plans, horizon=horizon, n_samples=n_samples, seed=seed, at=at)
    warn_if_extrapolated(sim.model, result.at + result.horizon, None)
    if json_flag:
        typer.echo(json.dumps(result.to_dict(), indent=1))
    else:
        unit = sim.model.time_unit
        typer.echo(
            f"subject {patient}: what-if from t = {result.at:.2f} {unit}, horizon {result.horizon:g} {unit}, "
            f"{n_samples} posterior draws, seed {seed}"
        )
        typer.echo(f"reference plan: {result.reference}; effects are (plan - reference), mean and 90% interval\n")
        effects = result.effects()
        typer.echo(markdown_table(effects.drop(columns=["subject_id", "reference", "kind"]), index=False))
    if plot is not None:
        from vpatient.atomic import staged_file
        from vpatient.plots import plot_whatif

        with staged_file(plot) as staging:
            plot_whatif(result, record=record).savefig(staging, dpi=110, bbox_inches="tight")
        typer.echo(f"wrote {plot}", err=True)
    write_predictions_out(result, record, sim.model, out, out_format, overwrite)


@simulate_app.command("cohort")
def simulate_cohort(
    model: ModelOption,
    n: Annotated[int, typer.Option("--n", min=1, help="Virtual patients to draw.")],
    out: Annotated[
        Path, typer.Option("--out", help="Output directory (MEDS under meds/ or FHIR NDJSON under fhir/, events under events/).")
    ],
    years: Annotated[
        float | None,
        typer.Option(help=f"Follow-up, {IN_TIME_UNIT} (the name is historical); default the model's default horizon."),
    ] = None,
    schedule: Annotated[str, typer.Option(help="Visit schedule: as_observed, regular or random.")] = "as_observed",
    visit_interval: Annotated[
        float | None, typer.Option(help=f"Time between visits (regular) or mean gap (random), {IN_TIME_UNIT}.")
    ] = None,
    plan: Annotated[
        Path | None, typer.Option(help="Give every patient this plan (JSON) instead of their arm's treatment.")
    ] = None,
    seed: SeedOption = 0,
    chunk_size: ChunkOption = 5_000,
    engine: CohortEngineOption = "auto",
    scheduler: SchedulerOption = None,
    workers: WorkersOption = 2,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output directory.")] = False,
    progress: ProgressOption = True,
    data_format: FormatOption = "meds",
) -> None:
    """Draw new virtual patients from the learned population and write them as a MEDS directory (or FHIR NDJSON) plus an events table."""
    from vpatient.data.formats import DataFormat

    fmt = choose(DataFormat, data_format, "--format")
    sim = load_simulator(model)
    years = sim.model.default_horizon if years is None else years
    chosen = load_plan(plan, sim.model.config) if plan is not None else None
    result = sim.cohort(
        n,
        seed=seed,
        years=years,
        schedule=_choice(schedule, ("as_observed", "regular", "random"), "--schedule"),
        out=out,
        visit_interval=visit_interval,
        plan=chosen,
        chunk_size=chunk_size,
        engine=_choice(engine, ("auto", "local", "processes", "dask"), "--engine"),
        scheduler=scheduler,
        n_workers=workers,
        overwrite=overwrite,
        progress=progress,
        format=fmt,
    )
    written = f"{result.n_resources:,} FHIR resources" if result.format == DataFormat.FHIR else f"{result.n_rows:,} MEDS rows"
    typer.echo(
        f"wrote {result.n_patients:,} virtual patients followed {years:g} {sim.model.time_unit} "
        f"({written}, {result.n_events:,} events) to {result.out_dir}"
    )


@simulate_app.command("trial")
def simulate_trial(
    model: ModelOption,
    arm: Annotated[list[str], typer.Option("--arm", help="NAME=PLAN.json; repeat per arm. The first arm is the reference.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory (tables, trial.json, trial.md, trial.png).")],
    n: Annotated[int, typer.Option("--n", min=1, help="Virtual patients (each is simulated under every arm).")] = 1000,
    years: Annotated[
        float | None,
        typer.Option(help=f"Follow-up, {IN_TIME_UNIT} (the name is historical); default the model's default horizon."),
    ] = None,
    event: Annotated[str | None, typer.Option(help="Primary event (default: the config's first event kind).")] = None,
    data: Annotated[
        str | None,
        typer.Option(help="Use this dataset's real patients at enrolment instead of virtual ones (embedded or a MEDS path)."),
    ] = None,
    config: ConfigOption = None,
    seed: SeedOption = 0,
    chunk_size: ChunkOption = 5_000,
    engine: EngineOption = "local",
    scheduler: SchedulerOption = None,
    workers: WorkersOption = 2,
    progress: ProgressOption = True,
) -> None:
    """An in-silico trial: the same patients under each arm (common random numbers), analysed like a real trial."""

    sim = load_simulator(model)
    years = sim.model.default_horizon if years is None else years
    arms = load_arms(arm, sim.model.config)
    population = sim.model.patients(data, config).records if data else None
    from vpatient.atomic import staged_dir
    from vpatient.plots import plot_trial

    # staged beside --out and renamed into place: a killed run leaves the previous trial or none
    with staged_dir(out, marker="trial.json") as staging:
        result = sim.trial(
            arms,
            n=n,
            seed=seed,
            years=years,
            event=event,
            population=population,
            chunk_size=chunk_size,
            engine=_choice(engine, ("local", "dask"), "--engine"),
            scheduler=scheduler,
            n_workers=workers,
            out=staging,
            progress=progress,
        )
        plot_trial(result, staging / "trial.png")
    typer.echo(result.to_markdown())
    typer.echo(f"wrote tables, trial.json, trial.md and trial.png to {out}", err=True)


def _choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}", param_hint=option)
    return value


@trial_app.callback()
def _trial() -> None:
    """Re-analyse a real trial (a group even with one command, so `vpatient trial adjust` stays stable)."""


@trial_app.command("adjust")
def trial_adjust(
    data: TrialDataOption,
    config: ConfigOption = None,
    folds: Annotated[
        int, typer.Option("--folds", min=2, help="Cross-fitting folds: each patient scored by a model that did not see them.")
    ] = 5,
    seed: SeedOption = 0,
    event: Annotated[str | None, typer.Option(help="Primary event (default: death, else the config's first event kind).")] = None,
    horizon: Annotated[
        float, typer.Option(help="Time of the survival score (log cumulative hazard), in the config's time unit.")
    ] = 5.0,
    lab: Annotated[
        str | None, typer.Option(help="Lab analysed by ANCOVA (default: the config's first continuous variable).")
    ] = None,
    at: Annotated[float, typer.Option(help="Time of the lab outcome (and of its score).")] = 2.0,
    window: Annotated[float, typer.Option(help="The lab outcome is the visit nearest --at within this distance.")] = 0.5,
    n_samples: Annotated[int, typer.Option("--samples", min=1, help="Posterior draws per patient behind each score.")] = 100,
    cache_dir: CacheDirOption = DEFAULT_CACHE,
    out: Annotated[Path, typer.Option("--out", help="Directory of trial-adjustment.json and .md.")] = Path("trial-adjustment"),
    progress: ProgressOption = True,
) -> None:
    """Digital-twin covariate adjustment (PROCOVA): the trial's effects without and with a cross-fitted prognostic score.

    Each patient's score comes from baseline data only, predicted under the reference
    (untreated) arm by the model of a fold that did not train on them. There is no
    --model: a model trained on a patient has seen their outcome and would leak it into
    the covariate, so fold models are always trained (once; they are cached).
    """
    from vpatient.benchmarks.trial_adjustment import run_trial_adjustment
    from vpatient.datasets import load_dataset

    result = run_trial_adjustment(
        load_dataset(data, config, seed=seed),
        folds,
        seed,
        event=event,
        horizon=horizon,
        lab=lab,
        at=at,
        window=window,
        n_samples=n_samples,
        cache_dir=cache_dir,
        progress=progress,
    )
    typer.echo(result.to_markdown())
    for path in result.write(out):
        typer.echo(f"wrote {path}", err=True)
