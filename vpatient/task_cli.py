"""``vpatient task make|show`` (MEDS label tables, :mod:`vpatient.tasks`) and ``vpatient predict`` (:mod:`vpatient.predict`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vpatient.benchmarks.options import ConfigOption, DataOption, ModelOption, PatientDataOption, ProgressOption, SeedOption

__all__ = ["predict_command", "task_app"]

task_app = typer.Typer(help="Prediction tasks: MEDS label tables for shared evaluation (meds-evaluation).", no_args_is_help=True)

TaskOption = Annotated[
    str, typer.Option("--task", help="A task folder (task.json + labels.parquet; vpatient task make) or an embedded task.")
]


@task_app.command("make")
def task_make(
    out: Annotated[Path, typer.Option("--out", help="Task folder to write (task.json and labels.parquet).")],
    event: Annotated[str, typer.Option("--event", help="The event variable whose occurrence is the label.")],
    window: Annotated[
        float, typer.Option("--window", help="The event counts within this long after each visit, in the config's time unit.")
    ],
    name: Annotated[str, typer.Option("--name", help="Short task name, e.g. death_2y.")],
    data: DataOption = "pbc2",
    config: ConfigOption = None,
    description: Annotated[str, typer.Option(help="What the task asks (default: said from event and window).")] = "",
    seed: SeedOption = 0,
) -> None:
    """Label every visit of a dataset with "did EVENT happen within WINDOW after it" (censored visits left out)."""
    from vpatient.datasets import load_dataset
    from vpatient.tasks import make_task, task_summary, write_task

    cohort = load_dataset(data, config, seed=seed)
    task = make_task(cohort.records, cohort.config, event, window, name, description, dataset=data)
    path = write_task(task, out)
    typer.echo(f"{task_summary(task)}; wrote {path}")


@task_app.command("show")
def task_show(task: Annotated[str, typer.Argument(help="A task folder or an embedded task (pbc2-death_2y).")]) -> None:
    """Print a task's spec and the size of its label table."""
    from vpatient.tasks import load_task, task_summary

    loaded = load_task(task)
    typer.echo(loaded.spec.model_dump_json(indent=2))
    typer.echo(task_summary(loaded))


def predict_command(
    model: ModelOption,
    task: TaskOption,
    out: Annotated[Path, typer.Option("--out", help="Predictions parquet to write (meds-evaluation's layout).")],
    data: PatientDataOption = None,
    config: ConfigOption = None,
    n_samples: Annotated[int, typer.Option(min=1, help="Posterior sample paths per label row.")] = 200,
    batch_size: Annotated[int, typer.Option(min=1, help="Label rows simulated together (memory grows with it).")] = 32,
    seed: SeedOption = 0,
    progress: ProgressOption = True,
) -> None:
    """The model's probability of the task's event for every label row, from the data up to its prediction time only.

    Writes the label table plus predicted_boolean_probability and predicted_boolean_value
    (probability >= 0.5), the columns meds-evaluation scores.
    """
    from vpatient.predict import predict, write_predictions
    from vpatient.tasks import load_task, task_summary
    from vpatient.virtual_patient import VirtualPatientModel

    loaded = load_task(task)
    vpm = VirtualPatientModel.load(model)
    cohort = vpm.patients(data, config, seed)
    predictions = predict(vpm, cohort.records, loaded, seed=seed, n_samples=n_samples, batch_size=batch_size, progress=progress)
    path = write_predictions(predictions, out)
    typer.echo(f"{task_summary(loaded)}; predicted from {cohort.name}; wrote {path}")
