"""``vpatient benchmark``: named benchmarks, the peers side by side on the same splits.

A typer sub-app; the main CLI mounts it with ``app.add_typer(benchmark_app, name="benchmark")``.
Each command is a thin call into its module of :mod:`vpatient.benchmarks`, then
``result.write(out_dir)``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from vpatient.benchmarks.base import DEFAULT_OUT_DIR, BenchmarkResult
from vpatient.benchmarks.options import (
    DEFAULT_MEMBERS,
    CacheDirOption,
    ConfigOption,
    DataOption,
    FoldsOption,
    MembersOption,
    ModelOption,
    OutDirOption,
    ProgressOption,
    SeedOption,
    SettingsFileOption,
    SizeOption,
    TrialDataOption,
)
from vpatient.evaluate.fold_models import DEFAULT_CACHE
from vpatient.evaluate.methods import METHODS, WORLD_MODEL, default_methods
from vpatient.evaluate.protocol import DEFAULT_MAX_MISSING

__all__ = ["METHODS", "benchmark_app", "benchmark_forecast"]

log = logging.getLogger(__name__)

benchmark_app = typer.Typer(
    help="Benchmarks: every method on the same folds, results as JSON and markdown.", no_args_is_help=True
)


@benchmark_app.callback()
def _benchmark() -> None:
    """Run a named benchmark (a group even with one command, so `vpatient benchmark forecast` stays stable)."""


def _methods(spec: str | None) -> dict:
    """The methods named in ``spec`` (comma-separated), or every registered one when None."""
    if spec is None:
        return {n: METHODS[n] for n in default_methods()}
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise typer.BadParameter(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(METHODS)}", param_hint="--methods"
        )
    return {n: METHODS[n] for n in names}


def _floats(spec: str | None, option: str) -> list[float] | None:
    """Comma-separated positive numbers (``--landmarks 1,3,5``), or None when not given."""
    if spec is None:
        return None
    try:
        values = [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{spec!r}: expected comma-separated numbers", param_hint=option) from None
    if not values or any(not v > 0 for v in values):
        raise typer.BadParameter(f"{spec!r}: expected one or more numbers > 0", param_hint=option)
    return values


def _report(result: BenchmarkResult, paths: list[Path]) -> None:
    """The markdown on stdout, the written files on stderr."""
    typer.echo(result.to_markdown())
    for path in paths:
        typer.echo(f"wrote {path}", err=True)


def _world_model(settings_file: Path | None, members: int | None):
    """The world model's factory, trained as `vpatient train` would with these settings (the seed is the fold's)."""
    from vpatient.evaluate.forecaster import VirtualPatientForecaster
    from vpatient.train import layered_settings

    settings, model_settings = layered_settings(settings_file, {"members": DEFAULT_MEMBERS}, {"members": members})
    return lambda: VirtualPatientForecaster(settings, model_settings)


@benchmark_app.command("forecast")
def benchmark_forecast(
    data: DataOption,
    config: ConfigOption = None,
    folds: FoldsOption = 5,
    seed: SeedOption = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="JSON result path (default OUT_DIR/forecast-<data>.json).")
    ] = None,
    predictions: Annotated[
        Path | None, typer.Option("--predictions", help="Write every predicted cell to this parquet file.")
    ] = None,
    out_dir: OutDirOption = DEFAULT_OUT_DIR,
    methods: Annotated[
        str | None,
        typer.Option(
            "--methods",
            help="Comma-separated methods. Default: every method that applies to the data "
            f"({', '.join(default_methods())}); the others are listed with the reason.",
            show_default=False,
        ),
    ] = None,
    max_missing: Annotated[
        float, typer.Option("--max-missing", help="Leave out continuous variables missing at more than this share of visits.")
    ] = DEFAULT_MAX_MISSING,
    event: Annotated[
        str | None,
        typer.Option(
            "--event",
            help="Event kind whose risk is scored. Default: death if the config has it, else its first event kind, "
            "else none (forecasts only).",
            show_default=False,
        ),
    ] = None,
    landmarks: Annotated[
        str | None,
        typer.Option(
            "--landmarks",
            help="Comma-separated survival landmarks s, in the config's time unit. Default: pbc2 1,3,5 (embedded data keep "
            "their committed grid); other data "
            "the 25/50/75% quantiles of the visit times (2 significant digits).",
            show_default=False,
        ),
    ] = None,
    windows: Annotated[
        str | None,
        typer.Option(
            "--windows",
            help="Comma-separated windows w (risk of the event within s + w), in the config's time unit. Default: pbc2 "
            "1,3,5; other data 1/4 and 1/2 of the median follow-up (2 significant digits).",
            show_default=False,
        ),
    ] = None,
    min_events: Annotated[
        int, typer.Option("--min-events", min=1, help="A fold's (s, w) cell with fewer events is not scored (and noted).")
    ] = 5,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="Recompute every (fold, method), ignoring the parts an earlier run kept in OUT_DIR/.forecast-<data>.parts.",
        ),
    ] = False,
    n: SizeOption = None,
    members: Annotated[
        int | None,
        typer.Option(
            "--members",
            min=1,
            help=f"Ensemble members of the world model (default: the settings file's, else {DEFAULT_MEMBERS}, "
            "as `vpatient train` gives).",
            show_default=False,
        ),
    ] = None,
    settings_file: SettingsFileOption = None,
    progress: ProgressOption = True,
) -> None:
    """Forecast later visits from the first half of each test subject's visits, and event risk at landmarks.

    Each finished (fold, method) is kept in OUT_DIR/.forecast-<data>.parts; a rerun with the same data and settings runs only what is missing.
    """
    from vpatient.benchmarks.forecast import run_forecast_benchmark
    from vpatient.datasets import load_dataset

    chosen = _methods(methods)
    if WORLD_MODEL in chosen:
        chosen[WORLD_MODEL] = _world_model(settings_file, members)
    cohort = load_dataset(data, config, seed=seed, n=n)
    truth = getattr(cohort, "truth", None)
    if truth is not None:  # synthetic data: score the ground truth too, as the noise floor
        from vpatient.evaluate.oracle import SyntheticOracle

        chosen["truth"] = lambda: SyntheticOracle(truth)
    result, table = run_forecast_benchmark(
        cohort,
        chosen,
        n_folds=folds,
        seed=seed,
        max_missing=max_missing,
        landmarks=_floats(landmarks, "--landmarks"),
        windows=_floats(windows, "--windows"),
        event=event,
        min_events=min_events,
        progress=progress,
        skip_inapplicable=methods is None,
        parts_dir=out_dir / f".forecast-{cohort.name}.parts",
        fresh=fresh,
    )
    _report(result, result.write(out_dir, json_path=json_out, predictions=table, predictions_path=predictions))


@benchmark_app.command("training")
def benchmark_training(
    data: DataOption = "pbc2",
    config: ConfigOption = None,
    seed: SeedOption = 0,
    members: Annotated[int, typer.Option("--members", min=1, help="Ensemble members (1: a single model).")] = 1,
    whatif_horizon: Annotated[
        float | None,
        typer.Option(
            "--whatif-horizon",
            help="Horizon of the timed what-ifs, in the data's time unit (default: the model's default horizon).",
            show_default=False,
        ),
    ] = None,
    n: SizeOption = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            min=1,
            help="Cap on training epochs (default: the training default). A capped run times the what-ifs, not a full fit.",
        ),
    ] = None,
    out_dir: OutDirOption = DEFAULT_OUT_DIR,
) -> None:
    """Time the training of the world model (default settings, --members members) on all of a dataset.

    With --members > 1 it also times two-plan what-ifs: for a new patient and after a plan edit.
    """
    from vpatient.benchmarks.training import run_training_benchmark
    from vpatient.datasets import load_dataset

    cohort = load_dataset(data, config, seed=seed, n=n)
    result, _ = run_training_benchmark(cohort, seed=seed, members=members, whatif_horizon=whatif_horizon, epochs=epochs)
    _report(result, result.write(out_dir))


@benchmark_app.command("counterfactual")
def benchmark_counterfactual(
    data: Annotated[
        str, typer.Option("--data", help="'synthetic' or 'synthetic-daily': the benchmark needs the generator's truth.")
    ] = "synthetic",
    n: Annotated[
        int | None,
        typer.Option("--n", min=20, help="Subjects per cohort (one cohort per strength); default 500, daily 1000."),
    ] = None,
    strengths: Annotated[str, typer.Option("--strengths", help="Comma-separated confounding strengths.")] = "0,1,2,3,4",
    seed: SeedOption = 0,
    settings_file: SettingsFileOption = None,
    out_dir: OutDirOption = DEFAULT_OUT_DIR,
    progress: ProgressOption = True,
) -> None:
    """Predict outcomes under plans patients did not get (withdrawn, started, doubled; daily: withdrawn, A, B, A+B) and score them against the generator's truth, per confounding strength."""
    from vpatient.benchmarks.counterfactual import WORLDS, parse_strengths, run_counterfactual_benchmark

    if data not in WORLDS:
        raise typer.BadParameter(f"{data!r}: only {' and '.join(WORLDS)} have a counterfactual truth", param_hint="--data")
    from vpatient.train import layered_settings

    train_settings, model_settings = layered_settings(settings_file)
    result = run_counterfactual_benchmark(
        n=n,
        seed=seed,
        strengths=parse_strengths(strengths),
        data=data,
        train_settings=train_settings,
        model_settings=model_settings,
        progress=progress,
    )
    _report(result, result.write(out_dir))


@benchmark_app.command("effect-calibration")
def benchmark_effect_calibration(
    data: Annotated[
        str, typer.Option("--data", help="'synthetic' (effects against the truth) or 'pbc2' (the null trial).")
    ] = "synthetic",
    members: Annotated[int, typer.Option("--members", min=2, help="Members of the ensemble set against the single model.")] = 5,
    n: Annotated[int, typer.Option("--n", min=20, help="Synthetic: subjects per cohort (one cohort per strength).")] = 500,
    strengths: Annotated[str, typer.Option("--strengths", help="Synthetic: comma-separated confounding strengths.")] = "0,2",
    folds: Annotated[
        int, typer.Option("--folds", min=0, help="PBC: folds of the cross-validated trial (0: in sample only).")
    ] = 5,
    seed: SeedOption = 0,
    cache_dir: CacheDirOption = DEFAULT_CACHE,
    out_dir: OutDirOption = DEFAULT_OUT_DIR,
    progress: ProgressOption = True,
) -> None:
    """Do 90% intervals of treatment effects cover the truth, and stay null for a null drug? Single model vs ensemble, same run."""
    from vpatient.benchmarks.counterfactual import parse_strengths
    from vpatient.benchmarks.effect_calibration import run_effect_calibration_pbc, run_effect_calibration_synthetic

    if data == "synthetic":
        result = run_effect_calibration_synthetic(n, seed, parse_strengths(strengths), members, progress=progress)
    else:
        from vpatient.datasets import load_dataset

        result = run_effect_calibration_pbc(
            load_dataset(data, seed=seed), seed, members, folds, cache_dir=cache_dir, progress=progress
        )
    _report(result, result.write(out_dir))


@benchmark_app.command("pbc-trial")
def benchmark_pbc_trial(
    seed: SeedOption = 0,
    folds: FoldsOption = 5,
    draws: Annotated[int, typer.Option("--draws", min=1, help="Posterior draws simulated per patient.")] = 20,
    years: Annotated[
        float, typer.Option("--years", min=10.0, help="Simulated follow-up (years; covers the 10-year check).")
    ] = 12.0,
    cache_dir: CacheDirOption = DEFAULT_CACHE,
    out_dir: OutDirOption = DEFAULT_OUT_DIR,
    progress: ProgressOption = True,
) -> None:
    """Replicate the Mayo PBC trial in silico (both arms from every enrolment record) and check it against the trial as observed."""
    from vpatient.benchmarks.pbc_trial import PbcTrialSettings, run_pbc_trial_benchmark
    from vpatient.datasets import load_dataset

    settings = PbcTrialSettings(
        seed=seed, n_folds=folds, years=years, draws_per_record=draws, cache_dir=cache_dir, progress=progress
    )
    result = run_pbc_trial_benchmark(load_dataset("pbc2"), settings)
    _report(result, result.write(out_dir))


@benchmark_app.command("cohort-fidelity")
def benchmark_cohort_fidelity(
    seed: SeedOption = 0,
    folds: FoldsOption = 5,
    virtual_multiple: Annotated[
        float,
        typer.Option("--virtual-multiple", min=0.1, help="Virtual cohort size as a multiple of the real training patients."),
    ] = 1.0,
    cv_repeats: Annotated[int, typer.Option("--cv-repeats", min=1, help="Shuffles of the classifier's cross-validation.")] = 5,
    cache_dir: CacheDirOption = DEFAULT_CACHE,
    out_dir: OutDirOption = DEFAULT_OUT_DIR,
    progress: ProgressOption = True,
) -> None:
    """Judge virtual PBC cohorts as synthetic data: a real-vs-virtual classifier, train-on-synthetic-test-on-real, distribution distances."""
    from vpatient.benchmarks.cohort_fidelity import CohortFidelitySettings, run_cohort_fidelity_benchmark
    from vpatient.datasets import load_dataset

    settings = CohortFidelitySettings(
        seed=seed,
        n_folds=folds,
        virtual_multiple=virtual_multiple,
        cv_repeats=cv_repeats,
        cache_dir=cache_dir,
        progress=progress,
    )
    result = run_cohort_fidelity_benchmark(load_dataset("pbc2"), settings)
    _report(result, result.write(out_dir))


@benchmark_app.command("simulate-speed")
def benchmark_simulate_speed(
    model: ModelOption,
    sizes: Annotated[str, typer.Option(help="Comma-separated cohort sizes to time.")] = "10000,100000",
    years: Annotated[float, typer.Option(help="Years to roll out.")] = 5.0,
    chunk_size: Annotated[int, typer.Option(min=1, help="Patients per chunk.")] = 10_000,
    stream_n: Annotated[
        int, typer.Option(min=0, help="Patients of the streamed cohort whose peak memory is measured (0: skip).")
    ] = 1_000_000,
    seed: SeedOption = 0,
    out_dir: OutDirOption = DEFAULT_OUT_DIR,
) -> None:
    """Patients per second of the fast rollout path against torchdiffeq dopri5, their largest difference, and peak memory of a streamed cohort."""
    from vpatient.benchmarks.simulate_speed import run_simulate_speed_benchmark

    try:
        chosen = tuple(int(s) for s in sizes.split(",") if s.strip())
    except ValueError:
        raise typer.BadParameter(f"{sizes!r}: expected comma-separated integers", param_hint="--sizes") from None
    result = run_simulate_speed_benchmark(model, chosen, years, chunk_size, stream_n or None, seed)
    _report(result, result.write(out_dir))


@benchmark_app.command("scale")
def benchmark_scale(
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", help="Checkpoint with its population (`vpatient train --out DIR` writes both) the rollout and cohort run."
        ),
    ] = None,
    parts: Annotated[
        str, typer.Option(help="Comma-separated parts to run: training, distributed, rollout, cohort (default: all).")
    ] = "training,distributed,rollout,cohort",
    sizes: Annotated[
        str, typer.Option(help="Comma-separated synthetic cohort sizes to train on, streamed.")
    ] = "1000,10000,100000",
    training_epochs: Annotated[int, typer.Option(min=1, help="Epochs at each training size.")] = 1,
    distributed_data: Annotated[
        str, typer.Option(help="Data of the 1-process against 2-process comparison: a dataset name or a MEDS directory.")
    ] = "synthetic",
    distributed_epochs: Annotated[int, typer.Option(min=1, help="Epochs of each run of that comparison.")] = 5,
    rollout_patients: Annotated[int, typer.Option(min=1, help="Virtual patients every solver rolls out.")] = 20_000,
    cohort_patients: Annotated[int, typer.Option(min=1, help="Patients of the virtual cohort run end to end.")] = 1_000_000,
    workdir: Annotated[
        Path | None, typer.Option(help="Where the training cohorts are written (default: a temporary folder, removed after).")
    ] = None,
    seed: SeedOption = 0,
    out_dir: OutDirOption = DEFAULT_OUT_DIR,
    progress: ProgressOption = True,
) -> None:
    """Training throughput and memory as cohorts grow (streamed), 1 against 2 data-parallel processes, the rollout against torchdiffeq, a million-patient cohort."""
    from vpatient.benchmarks.scale import ScalePart, run_scale_benchmark
    from vpatient.errors import choose

    chosen = [choose(ScalePart, part.strip(), "--parts") for part in parts.split(",") if part.strip()]
    if not chosen:
        raise typer.BadParameter("name at least one part", param_hint="--parts")
    try:
        training_sizes = tuple(int(s) for s in sizes.split(",") if s.strip())
    except ValueError:
        raise typer.BadParameter(f"{sizes!r}: expected comma-separated integers", param_hint="--sizes") from None
    simulates = {ScalePart.ROLLOUT, ScalePart.COHORT} & set(chosen)
    if simulates and (model is None or not (model / "population.json").is_file()):  # before any part runs, not after the first
        what = "needs --model" if model is None else f"needs a model with its population.json; {model} has none"
        raise typer.BadParameter(
            f"the {' and '.join(sorted(simulates))} part(s) {what} (`vpatient train --data pbc2 --out models/pbc2` writes one)",
            param_hint="--model",
        )
    result = run_scale_benchmark(
        model or Path("-"),
        parts=chosen,
        seed=seed,
        sizes=training_sizes,
        training_epochs=training_epochs,
        distributed_data=distributed_data,
        distributed_epochs=distributed_epochs,
        rollout_patients=rollout_patients,
        cohort_patients=cohort_patients,
        workdir=workdir,
        progress=progress,
    )
    _report(result, result.write(out_dir))


@benchmark_app.command("dashboard-speed")
def benchmark_dashboard_speed(
    model: Annotated[
        Path | None, typer.Option("--model", help="Checkpoint directory (default: the demo PBC model of `vpatient dashboard`).")
    ] = None,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Patients switched to per view, and new sessions timed.")] = 5,
    edit_patients: Annotated[
        str, typer.Option("--edit-patients", help="Comma-separated patients whose plan is edited.")
    ] = "1,32",
    seed: SeedOption = 0,
    out_dir: OutDirOption = DEFAULT_OUT_DIR,
) -> None:
    """Seconds a clinician waits: a rerun after a plan edit, the first patient view, switching patients (AppTest)."""
    from vpatient.benchmarks.dashboard_speed import run_dashboard_speed_benchmark
    from vpatient.dashboard.session import resolve_model_dir

    patients = [p.strip() for p in edit_patients.split(",") if p.strip()]
    result = run_dashboard_speed_benchmark(
        resolve_model_dir(model, train_demo=False), runs, None, patients, seed, progress=lambda line: typer.echo(line, err=True)
    )
    _report(result, result.write(out_dir))


@benchmark_app.command("kill-safety")
def benchmark_kill_safety(
    kills: Annotated[int, typer.Option("--kills", min=1, help="SIGKILLs per command, each at a random moment.")] = 50,
    commands: Annotated[
        str | None,
        typer.Option("--commands", help="Comma-separated writing commands (default: all of them).", show_default=False),
    ] = None,
    seed: SeedOption = 0,
    out_dir: OutDirOption = DEFAULT_OUT_DIR,
) -> None:
    """Every command that writes, SIGKILLed at random moments: the output must be the previous one or a complete new one."""
    from vpatient.benchmarks.kill_safety import COMMANDS, run_kill_safety

    names = None if commands is None else [c.strip() for c in commands.split(",") if c.strip()]
    if names is not None and (not names or any(n not in COMMANDS for n in names)):
        raise typer.BadParameter(f"{commands!r}: expected some of {', '.join(COMMANDS)}", param_hint="--commands")
    result = run_kill_safety(names, kills, seed, progress=lambda line: log.info("%s", line))
    _report(result, result.write(out_dir))


@benchmark_app.command("test-selection")
def benchmark_test_selection(
    seed: SeedOption = 0,
    folds: FoldsOption = 5,
    synthetic_n: Annotated[int, typer.Option("--synthetic-n", min=20, help="Synthetic cohort size.")] = 300,
    synthetic_folds: Annotated[int, typer.Option("--synthetic-folds", min=2, help="Folds over synthetic patients.")] = 3,
    members: MembersOption = DEFAULT_MEMBERS,
    jobs: Annotated[
        int, typer.Option("--jobs", min=1, help="Worker processes, each running whole datasets (one torch thread each).")
    ] = 2,
    n_samples: Annotated[int, typer.Option("--samples", min=16, help="Pool samples per patient for the curves.")] = 256,
    n_train_patients: Annotated[
        int, typer.Option("--train-patients", min=1, help="Training patients per fold that choose the best fixed order.")
    ] = 25,
    max_patients: Annotated[
        int | None, typer.Option("--max-patients", min=1, help="At most this many held-out patients per fold.")
    ] = None,
    scenarios: Annotated[
        str, typer.Option("--scenarios", help="Comma-separated scenarios: first_visit, after_gap, follow_up.")
    ] = "first_visit,after_gap,follow_up",
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target",
            help="A target of every dataset, repeatable: risk:<event>:<time> or forecast:<variable>:<time> "
            "(default: death within 3 years and bilirubin, or the first lab, at 2 years).",
        ),
    ] = None,
    latency_patients: Annotated[int, typer.Option("--latency-patients", min=0, help="PBC patients timed.")] = 30,
    truth_patients: Annotated[
        int, typer.Option("--truth-patients", min=0, help="Synthetic patients per scenario and target against the truth.")
    ] = 20,
    truth_samples: Annotated[int, typer.Option("--truth-samples", min=100, help="Nested-MC samples of the true EIG.")] = 4096,
    truth_model_samples: Annotated[
        int, typer.Option("--truth-model-samples", min=16, help="recommend() samples compared with the truth.")
    ] = 1024,
    data: Annotated[str, typer.Option("--data", help="Comma-separated datasets: pbc2, synthetic.")] = "pbc2,synthetic",
    cache_dir: CacheDirOption = DEFAULT_CACHE,
    out_dir: OutDirOption = DEFAULT_OUT_DIR,
    progress: ProgressOption = True,
) -> None:
    """Order the tests of a visit by expected information per cost, against random, best fixed, static-EIG and cheapest orders."""
    from vpatient.benchmarks.next_test_selection import SCENARIOS, NextTestSelectionSettings, run_test_selection_benchmark

    datasets = tuple(d.strip() for d in data.split(",") if d.strip())
    chosen = tuple(s.strip() for s in scenarios.split(",") if s.strip())
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown or not chosen:
        raise typer.BadParameter(f"unknown scenario(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(SCENARIOS)}")
    settings = NextTestSelectionSettings(
        seed=seed,
        n_folds=folds,
        datasets=datasets,
        synthetic_n=synthetic_n,
        synthetic_folds=synthetic_folds,
        targets={d: list(target) for d in datasets} if target else None,
        scenarios=chosen,
        members=members,
        jobs=jobs,
        n_samples=n_samples,
        n_train_patients=n_train_patients,
        max_patients_per_fold=max_patients,
        latency_patients=latency_patients,
        truth_patients=truth_patients,
        truth_samples=truth_samples,
        truth_model_samples=truth_model_samples,
        cache_dir=cache_dir,
        progress=progress,
    )
    result = run_test_selection_benchmark(settings)
    _report(result, result.write(out_dir))


@benchmark_app.command("trial-adjustment")
def benchmark_trial_adjustment(
    data: TrialDataOption = "pbc2",
    config: ConfigOption = None,
    seed: SeedOption = 0,
    folds: FoldsOption = 5,
    cache_dir: CacheDirOption = DEFAULT_CACHE,
    out_dir: OutDirOption = DEFAULT_OUT_DIR,
    progress: ProgressOption = True,
) -> None:
    """Re-analyse the real trial with a cross-fitted prognostic score (PROCOVA): SE reduction of the log HR and a lab's ANCOVA."""
    from vpatient.benchmarks.trial_adjustment import run_trial_adjustment
    from vpatient.datasets import load_dataset

    result = run_trial_adjustment(load_dataset(data, config, seed=seed), folds, seed, cache_dir=cache_dir, progress=progress)
    _report(result, result.write(out_dir))


@benchmark_app.command("meds-eval")
def benchmark_meds_eval(
    data: DataOption = "pbc2",
    config: ConfigOption = None,
    task: Annotated[
        str, typer.Option("--task", help="A task folder (vpatient task make) or an embedded task; its labels must be of --data.")
    ] = "pbc2-death_2y",
    seed: SeedOption = 0,
    folds: FoldsOption = 5,
    n_samples: Annotated[int, typer.Option(min=1, help="vpatient's posterior sample paths per label row.")] = 200,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=0, help="Resamples of subjects for the 95% intervals.")] = 1000,
    cache_dir: CacheDirOption = DEFAULT_CACHE,
    out_dir: OutDirOption = DEFAULT_OUT_DIR,
    progress: ProgressOption = True,
) -> None:
    """vpatient and the landmark Cox model, out of sample on one MEDS label table, scored by meds-evaluation."""
    from vpatient.benchmarks.meds_eval import MedsEvalSettings, run_meds_eval_benchmark
    from vpatient.datasets import load_dataset
    from vpatient.tasks import load_task

    settings = MedsEvalSettings(
        seed=seed, n_folds=folds, n_samples=n_samples, n_bootstrap=bootstrap, cache_dir=cache_dir, progress=progress
    )
    result, predictions = run_meds_eval_benchmark(load_dataset(data, config, seed=seed), load_task(task), settings)
    _report(result, result.write(out_dir, predictions=predictions))


@benchmark_app.command("fhir-read")
def benchmark_fhir_read(
    sizes: Annotated[str, typer.Option(help="Comma-separated cohort sizes (synthetic patients).")] = "10000,100000",
    chunk_size: Annotated[int, typer.Option(min=1, help="Synthetic patients generated at a time.")] = 5_000,
    seed: SeedOption = 0,
    out_dir: OutDirOption = DEFAULT_OUT_DIR,
) -> None:
    """Time and peak memory of reading synthetic cohorts back from FHIR Bulk Data NDJSON (each step in a fresh process)."""
    from vpatient.benchmarks.fhir_read import run_fhir_read_benchmark

    try:
        chosen = tuple(int(s) for s in sizes.split(",") if s.strip())
    except ValueError:
        raise typer.BadParameter(f"{sizes!r}: expected comma-separated integers", param_hint="--sizes") from None
    if not chosen or min(chosen) < 1:
        raise typer.BadParameter(f"{sizes!r}: expected positive sizes", param_hint="--sizes")
    result = run_fhir_read_benchmark(chosen, seed, chunk_size)
    _report(result, result.write(out_dir))
