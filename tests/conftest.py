"""Shared fixtures (a small config with every variable kind, a valid record for it, an untrained model), one torch
thread per process, and a session-end check that no process a test started is still running."""

from __future__ import annotations

import os
import shutil

# One torch (OpenMP) thread in this process and in the commands the tests start, unless the caller chose a count.
# torch's default, a thread per core, made the suite's models several times slower on a 2-core CI machine: the
# threads spin while waiting for each other and for the test's own subprocesses (measured on 2 shared cores: two
# dashboard trial tests, 16 s of CPU on one thread against 150 to 185 s on two). Training already runs on one
# thread on 2 cores (vpatient.train.default_threads); this brings the tests' forecasts and simulations in line.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import psutil
import pytest

from vpatient.schemas import DatasetConfig, TreatmentExposure, TreatmentPlan


def pytest_configure(config: pytest.Config) -> None:
    """Hold torch to OMP_NUM_THREADS even where it was imported before this file set it."""
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture()
def config() -> DatasetConfig:
    return DatasetConfig.model_validate(
        {
            "name": "tiny",
            "variables": [
                {"name": "age", "codes": ["MEDS_BIRTH"], "kind": "static", "plausible_range": [0, 120]},
                {"name": "sex", "codes": ["SEX"], "kind": "static", "categories": {"female": 0, "male": 1}},
                {
                    "name": "bilirubin",
                    "codes": ["LAB//BILI"],
                    "kind": "continuous",
                    "transform": "log",
                    "unit": "mg/dl",
                    "plausible_range": [0.05, 60],
                    "test": "panel",
                },
                {
                    "name": "albumin",
                    "codes": ["LAB//ALB"],
                    "kind": "continuous",
                    "unit": "g/dl",
                    "plausible_range": [0.5, 9],
                    "out_of_range": "warn",
                    "test": "panel",
                },
                {"name": "ascites", "codes": ["SIGN//ASCITES"], "kind": "binary", "test": "exam"},
                {"name": "stage", "codes": ["STAGE"], "kind": "ordinal", "levels": [1, 2, 3, 4], "test": "exam"},
                {"name": "ct", "codes": ["IMG//CT"], "kind": "imaging_embedding", "dimension": 4, "test": "imaging"},
                {"name": "diabetes", "codes": ["ICD//E11"], "kind": "history"},
                {"name": "drug", "codes": ["RX//DRUG"], "kind": "treatment", "plausible_range": [0, 2]},
                {"name": "death", "codes": ["MEDS_DEATH"], "kind": "event"},
                {"name": "transplant", "codes": ["EVENT//TX"], "kind": "event"},
            ],
            "tests": [
                {"name": "panel", "variables": ["bilirubin", "albumin"], "cost": 1},
                {"name": "exam", "variables": ["ascites", "stage"], "cost": 0.5},
                {"name": "imaging", "variables": ["ct"], "cost": 10, "turnaround_days": 3},
            ],
        }
    )


@pytest.fixture()
def record_data() -> dict:
    """A valid record of the tiny config, as the JSON a user would upload."""
    return {
        "subject_id": "p1",
        "static": {"age": 61.5, "sex": 1},
        "observations": [
            {"time": 0.0, "variable": "bilirubin", "value": 1.2},
            {"time": 0.0, "variable": "albumin", "value": 3.5},
            {"time": 0.0, "variable": "ascites", "value": 0},
            {"time": 0.0, "variable": "stage", "value": 2},
            {"time": 1.0, "variable": "bilirubin", "value": 2.0},
        ],
        "imaging": [{"time": 0.5, "modality": "ct", "embedding": [0.1, 0.2, 0.3, 0.4]}],
        "history": [{"time": -2.0, "code": "diabetes"}],
        "treatments": [{"treatment": "drug", "start": 0.0, "stop": 1.5, "dose": 1.0}],
        "events": [{"time": 3.0, "kind": "death"}],
        "end_of_followup": 3.0,
    }


def _simulated_trial_adjustment(n: int = 300, seed: int = 0, with_lab: bool = True):
    """A trial adjustment from the analyses on a small simulated randomised trial (x: a perfect prognostic score).

    Survival: hazard 0.1 exp(1.2 x), no treatment effect; lab: 1 + 0.8 x + 0.3 treated + noise, baseline a noisy x.
    """
    from vpatient.benchmarks.trial_adjustment import TrialAdjustmentResult
    from vpatient.simulation.adjustment import ancova_adjustment, cox_adjustment

    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    treated = rng.random(n) < 0.5
    event_time = rng.exponential(1 / (0.1 * np.exp(1.2 * x)))
    censor = rng.uniform(0, 8, n)
    survival = cox_adjustment(np.minimum(event_time, censor), event_time <= censor, treated, x, outcome="death")
    lab = 1 + 0.8 * x + 0.3 * treated + rng.normal(scale=0.5, size=n)
    lab[:20] = np.nan  # no follow-up value: left out
    baseline = x + rng.normal(scale=0.5, size=n)
    lab_effect = ancova_adjustment(lab, treated, x, baseline=baseline, label="log(bilirubin) at 2 years") if with_lab else None
    return TrialAdjustmentResult(
        data="pbc2",
        time_unit="years",
        treatment_arm="d_penicillamine",
        reference_arm="none",
        arm_sizes={"d_penicillamine": int(treated.sum()), "none": int((~treated).sum())},
        n_patients=n,
        event="death",
        horizon=5.0,
        lab="bilirubin" if with_lab else None,
        lab_at=2.0,
        lab_window=0.5,
        seed=seed,
        n_folds=5,
        n_samples=8,
        scoring="simulated: the true prognostic variable",
        survival=survival,
        lab_effect=lab_effect,
        se_target=0.1,
        survival_target_met=False,
        train_settings={},
        model_settings={},
        runtime_seconds=0.0,
    )


@pytest.fixture()
def simulated_trial_adjustment():
    """Builds a trial-adjustment result from the analyses of a small simulated trial (report and dashboard tests)."""
    return _simulated_trial_adjustment


@pytest.fixture(scope="session")
def none_plan() -> TreatmentPlan:
    """The synthetic cohort's control plan: no drug."""
    return TreatmentPlan(name="no drug")


@pytest.fixture(scope="session")
def drug_plan() -> TreatmentPlan:
    """The synthetic cohort's treatment plan: the drug at dose 1 from t = 0."""
    return TreatmentPlan(name="drug", exposures=[TreatmentExposure(treatment="drug", start=0.0, dose=1.0)])


@pytest.fixture(scope="session")
def untrained_model_dir(tmp_path_factory):
    """A PBC model with seeded, untrained weights, saved in about a second.

    For tests of what happens before any modelling (checks of options, of checkpoint files):
    its forecasts are meaningless, its files and shapes are a real model's.
    """
    import torch

    from vpatient.data.batching import Scalers, layout_from_config
    from vpatient.datasets import load_dataset
    from vpatient.model.latent_ode import LatentODE, ModelSettings
    from vpatient.virtual_patient import VirtualPatientModel

    cohort = load_dataset("pbc2")
    scalers = Scalers.fit(cohort.records, cohort.config)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        network = LatentODE(layout_from_config(cohort.config), ModelSettings(), time_scale=scalers.time_scale)
    model = VirtualPatientModel(network, cohort.config, scalers, data_source="pbc2")
    return model.save(tmp_path_factory.mktemp("untrained-model"))


@pytest.fixture(scope="session")
def pbc_two_epoch_model_dir(tmp_path_factory):
    """A PBC model trained for 2 epochs (seed 0) on every patient, saved: trained once for the dashboard's tests.

    Tests copy it before use (shutil.copytree), so nothing one of them writes beside it reaches another.
    """
    from vpatient.datasets import load_dataset
    from vpatient.train import TrainSettings
    from vpatient.virtual_patient import VirtualPatientModel

    cohort = load_dataset("pbc2")
    model = VirtualPatientModel.fit(cohort.records, cohort.config, TrainSettings(epochs=2, seed=0), progress=False)
    model.data_source = "pbc2"
    return model.save(tmp_path_factory.mktemp("pbc-two-epochs") / "model")


@pytest.fixture(scope="session")
def untrained_simulator_dir(untrained_model_dir, tmp_path_factory):
    """A copy of the untrained PBC model with a population fitted to 60 patients: virtual cohorts in a second.

    For tests of how cohorts are written (formats, files), not of what the model predicts.
    """
    from vpatient.datasets import load_dataset
    from vpatient.simulation import Simulator

    path = tmp_path_factory.mktemp("untrained-simulator") / "model"
    shutil.copytree(untrained_model_dir, path)
    Simulator.load(path).fit_population(load_dataset("pbc2").records[:60], seed=0)
    return path


# Children Python itself keeps for the life of the interpreter (multiprocessing's helpers), not started by a test.
_INTERPRETER_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _leftover_children() -> list[psutil.Process]:
    """Running descendants of this pytest process, apart from the interpreter's own helpers."""
    left = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            if any(helper in " ".join(child.cmdline()) for helper in _INTERPRETER_HELPERS):
                continue
            left.append(child)
        except psutil.NoSuchProcess:
            continue
    return left


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when a test left a process running (a server, a browser, a worker), after killing it.

    Processes get a few seconds to finish exiting first: a test that stopped its server may
    still be waiting for it to go.
    """
    _, alive = psutil.wait_procs(_leftover_children(), timeout=5)
    if not alive:
        return
    described = []
    for process in alive:
        try:
            described.append(f"{process.pid}: {' '.join(process.cmdline())[:200]}")
            process.kill()
        except psutil.NoSuchProcess:
            continue
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write("\n")
        reporter.write_line(f"ERROR: tests left {len(described)} process(es) running (now killed):", red=True)
        for line in described:
            reporter.write_line(f"  {line}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
