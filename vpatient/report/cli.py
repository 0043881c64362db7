"""``vpatient report patient|trial|model``: thin calls into :mod:`vpatient.report`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from vpatient.benchmarks.options import IN_TIME_UNIT, ConfigOption, ModelOption, PatientDataOption, SeedOption

__all__ = ["report_app"]

report_app = typer.Typer(help="Self-contained HTML (and PDF) reports: a patient, a trial, the model card.", no_args_is_help=True)

OutOption = Annotated[Path, typer.Option("--out", help="HTML file to write (one self-contained file).")]
PdfOption = Annotated[Path | None, typer.Option("--pdf", help="Also write a PDF (WeasyPrint).")]
CardOption = Annotated[str | None, typer.Option("--card", help="Link to the model card (a path or URL) from the report.")]


def _command() -> str:
    return "vpatient " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""


def _done(paths: list[Path]) -> None:
    for path in paths:
        typer.echo(f"wrote {path}", err=True)


@report_app.command("patient")
def report_patient(
    model: ModelOption,
    patient: Annotated[str, typer.Option("--patient", help="Subject id in the model's dataset (or --data).")],
    plan: Annotated[list[Path], typer.Option("--plan", help="Treatment plan JSON; repeat. The first is the reference.")],
    out: OutOption,
    pdf: PdfOption = None,
    seed: SeedOption = 0,
    horizon: Annotated[
        float | None,
        typer.Option(
            help=f"How far to forecast beyond the decision time, {IN_TIME_UNIT}; default the config's horizon, "
            "else the training data's median follow-up."
        ),
    ] = None,
    at: Annotated[float | None, typer.Option(help=f"Decision time, {IN_TIME_UNIT}; default the last visit.")] = None,
    data: PatientDataOption = None,
    config: ConfigOption = None,
    n_samples: Annotated[int, typer.Option(min=1, help="Posterior sample paths.")] = 200,
    next_visit: Annotated[
        float | None,
        typer.Option(
            help=f"Time from the decision time to the visit the tests are for, {IN_TIME_UNIT}; "
            "default half the typical gap between the training data's visits."
        ),
    ] = None,
    card: CardOption = None,
    test_target: Annotated[
        str | None,
        typer.Option(
            "--test-target",
            help=f"What the next tests are ranked by: latent, risk:<event>:<horizon> or forecast:<variable>:<horizon>; "
            f"horizon {IN_TIME_UNIT}. Default: risk of the first event within the horizon (the model's default at most).",
        ),
    ] = None,
) -> None:
    """A patient's report: history, forecasts and survival per plan, effects, next tests, assumptions and limits."""
    from vpatient.report.patient import next_visit_gap, patient_report
    from vpatient.simulation.cli import load_whatif

    sim, plans, record = load_whatif(model, plan, patient, data, config)
    next_visit = next_visit_gap(sim.model) if next_visit is None else next_visit
    report = patient_report(
        sim,
        record,
        plans,
        horizon=horizon,
        n_samples=n_samples,
        seed=seed,
        at=at,
        next_visit=next_visit,
        card_link=card,
        command=_command(),
        test_target=test_target,
    )
    _done(report.write(out, pdf))


@report_app.command("trial")
def report_trial(
    model: ModelOption,
    arm: Annotated[list[str], typer.Option("--arm", help="NAME=PLAN.json; repeat per arm. The first is the reference.")],
    out: OutOption,
    pdf: PdfOption = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Virtual patients (each under every arm).")] = 1000,
    years: Annotated[
        float | None,
        typer.Option(help=f"Follow-up, {IN_TIME_UNIT} (the name is historical); default the model's default horizon."),
    ] = None,
    event: Annotated[str | None, typer.Option(help="Primary event (default: the config's first event).")] = None,
    seed: SeedOption = 0,
    draws_per_record: Annotated[int, typer.Option(min=1, help="Posterior draws per training patient for subgroups.")] = 4,
    card: CardOption = None,
    adjustment: Annotated[
        Path | None,
        typer.Option(
            "--adjustment",
            help="trial-adjustment.json of `vpatient trial adjust`: adds the real trial's prognostic-score adjustment.",
        ),
    ] = None,
) -> None:
    """An in-silico trial's report: Kaplan-Meier per arm, HR and RMST with CIs, subgroups, labs, observed arms."""
    from vpatient.report.insilico_trial import trial_report
    from vpatient.report.procova import load_adjustment
    from vpatient.simulation.cli import load_arms, load_simulator

    if adjustment is not None:
        load_adjustment(adjustment)  # refuse a wrong file before the model loads; the report reads it again (a few kB)
    sim = load_simulator(model)
    years = sim.model.default_horizon if years is None else years
    arms = load_arms(arm, sim.model.config)
    report = trial_report(
        sim,
        arms,
        n=n,
        seed=seed,
        years=years,
        event=event,
        draws_per_record=draws_per_record,
        card_link=card,
        command=_command(),
        adjustment=adjustment,
    )
    _done(report.write(out, pdf))


@report_app.command("model")
def report_model(
    model: ModelOption,
    out: OutOption,
    pdf: PdfOption = None,
    benchmarks: Annotated[
        Path | None, typer.Option(help="Benchmark results folder (default: benchmarks/results found near the model).")
    ] = None,
) -> None:
    """The model card: intended use, training data, missing data, performance with CIs, calibration, limits."""
    from vpatient.report.card import model_card
    from vpatient.simulation import Simulator

    card = model_card(Simulator.load(model), benchmarks=benchmarks, command=_command())
    _done(card.write(out, pdf))
