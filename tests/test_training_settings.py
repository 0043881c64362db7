"""Training settings: the settings file, the thread count and how an ensemble shares threads and time."""

from __future__ import annotations

import json
from dataclasses import fields, replace

import pytest
import torch

from vpatient.data.synthetic import synthetic_cohort
from vpatient.ensemble import member_settings
from vpatient.errors import ConfigError, VPatientError
from vpatient.model.dynamics import Solver
from vpatient.model.latent_ode import ModelSettings
from vpatient.train import (
    SETTING_RANGES,
    SettingsFile,
    TrainSettings,
    build_settings,
    default_threads,
    fit_latent_ode,
    torch_threads,
)


def test_the_settings_file_mirrors_train_and_model_settings():
    """The file takes every field of both dataclasses, and each range rule names one of them (no stale rule)."""
    names = {f.name for f in fields(TrainSettings)} | {f.name for f in fields(ModelSettings)}
    assert set(SettingsFile.model_fields) == names
    assert set(SETTING_RANGES) <= names


def test_a_settings_file_sets_only_what_it_names(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"learning_rate": 0.01, "solver": "dopri5", "step": 0.1, "max_minutes": 30}))
    values = SettingsFile.read(path)
    assert values == {"learning_rate": 0.01, "solver": Solver.DOPRI5, "step": 0.1, "max_minutes": 30.0}
    train, model = build_settings(values, TrainSettings(members=5))
    assert train == TrainSettings(members=5, learning_rate=0.01, max_minutes=30.0)
    assert model == ModelSettings(solver=Solver.DOPRI5, step=0.1)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"learning_rat": 0.01}, "unknown key 'learning_rat' (known: epochs, learning_rate,"),
        ({"batch_size": 0}, "batch_size = 0: Input should be greater than or equal to 1"),
        ({"epochs": 2.5}, "epochs = 2.5: Input should be a valid integer"),
        ({"epochs": None}, "epochs = None: Input should be a valid integer"),
        ({"solver": "euler"}, "solver = 'euler': Input should be 'rk4' or 'dopri5'"),
        ([1, 2], "Input should be an object"),
    ],
)
def test_a_bad_settings_file_is_one_clear_error_naming_the_key(tmp_path, content, message):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError) as info:
        SettingsFile.read(path)
    assert str(info.value).startswith(f"settings file {path}: ") and message in str(info.value)


def test_torch_threads_restores_the_count_it_found():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("training failed")
    assert torch.get_num_threads() == before
    with pytest.raises(VPatientError, match="threads must be at least 1, got 0"), torch_threads(0):
        pass


def test_default_threads_leaves_small_machines_one_thread():
    assert [default_threads(cores) for cores in (1, 2, 3, 16)] == [1, 1, 2, 15]


def test_ensemble_members_share_the_cores_and_the_time_limit():
    settings = TrainSettings(members=5, seed=7, max_minutes=30.0)
    # 5 members on 16 cores: 16 // 5 = 3 threads each (the default, 15, capped); 2 at a time: 3 rounds of 10 minutes
    second = member_settings(settings, 1, workers=2, cores=16)
    assert (second.seed, second.members, second.threads, second.max_minutes) == (8, 1, 3, 10.0)
    # the thread count changes a network's last bits, so it must not depend on how many members train at once
    assert {member_settings(settings, 1, workers=w, cores=16).threads for w in (1, 2, 5, 40)} == {3}
    assert member_settings(TrainSettings(members=2, threads=4), 0, workers=2, cores=2).threads == 1
    assert member_settings(TrainSettings(members=2, threads=4), 0, workers=1, cores=16).threads == 4
    assert member_settings(TrainSettings(members=2), 0, workers=1, cores=16).max_minutes is None


@pytest.fixture(scope="module")
def tiny_cohort():
    return synthetic_cohort(n=10, seed=0, imaging_dim=2)


def test_training_runs_with_its_threads_and_restores_torchs(tiny_cohort, monkeypatch):
    seen = []

    def threads_at_the_check(network, batch):  # the noise check runs inside the training's thread block
        seen.append(torch.get_num_threads())
        return []

    monkeypatch.setattr("vpatient.train.loop.noise_warnings", threads_at_the_check)
    before = torch.get_num_threads()
    with torch_threads(2):
        fit_latent_ode(tiny_cohort.records, tiny_cohort.config, TrainSettings(epochs=1, threads=1), progress=False)
        assert seen == [1] and torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


def test_the_time_limit_stops_after_the_epoch_that_passes_it(tiny_cohort):
    limited = TrainSettings(epochs=3, max_minutes=1e-6, threads=1)
    _, _, history = fit_latent_ode(tiny_cohort.records, tiny_cohort.config, limited, progress=False)
    assert history.stopped_on_time and len(history.validation_loss) == 1 and history.best_epoch == 0
    _, _, history = fit_latent_ode(tiny_cohort.records, tiny_cohort.config, replace(limited, max_minutes=None), progress=False)
    assert not history.stopped_on_time and len(history.validation_loss) == 3
