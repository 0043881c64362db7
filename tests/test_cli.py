"""The vpatient command line, run as a user runs it (a real subprocess).

Each test's first command is a real subprocess; its further commands (refusals, checks of what the first
wrote) go through the same entry point in this process, which spares an interpreter's start-up (seconds) each.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from vpatient import __version__


def vp(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vpatient.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture()
def vp_here(monkeypatch, capsys) -> Callable[..., subprocess.CompletedProcess]:
    """``vp`` in this process: the console script's entry (vpatient.cli.run, with its error messages), its exit code and output."""
    from vpatient.cli import run

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # typer installs its own: put back after the test

    def call(*args: str) -> subprocess.CompletedProcess:
        monkeypatch.setattr(sys, "argv", ["vpatient", *args])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            run()
        out, err = capsys.readouterr()
        code = exited.value.code
        return subprocess.CompletedProcess(args, code if isinstance(code, int) else int(code is not None), out, err)

    return call


def test_version():
    result = vp("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"vpatient {__version__}"


def test_datasets_list_and_show(vp_here):
    listed = vp("datasets", "list")
    assert "pbc2" in listed.stdout and "synthetic" in listed.stdout
    shown = vp_here("datasets", "show", "pbc2")
    assert shown.returncode == 0, shown.stderr
    assert "| subjects | 312 |" in shown.stdout
    assert "| death | 140 | 71 | 69 |" in shown.stdout
    assert "Fleming" in shown.stdout


def test_unknown_dataset_is_a_message_not_a_traceback():
    result = vp("datasets", "show", "no-such-data")
    assert result.returncode == 1
    assert "no dataset 'no-such-data'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_validate_json_records(tmp_path, config, record_data, vp_here):
    cfg = tmp_path / "config.yaml"
    config.save(cfg)
    good = tmp_path / "good.json"
    good.write_text(json.dumps([record_data]))
    ok = vp("validate", str(good), "--config", str(cfg))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "valid (1 subjects, 0 errors, 0 warnings)" in ok.stdout

    second = dict(record_data, subject_id="p2", end_of_followup=-1)
    bad_first = json.loads(json.dumps(record_data))
    bad_first["observations"][0]["value"] = 1e9
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([bad_first, second]))
    result = vp_here("validate", str(bad), "--config", str(cfg))
    assert result.returncode == 1
    assert "subject p1: observations[0].value = 1000000000.0: outside the plausible range" in result.stdout
    assert "subject p2: end_of_followup = -1.0" in result.stdout
    assert "INVALID" in result.stdout and "Traceback" not in result.stderr

    as_json = json.loads(vp_here("validate", str(bad), "--config", str(cfg), "--json").stdout)
    assert {p["subject_id"] for p in as_json} == {"p1", "p2"}


def test_validate_without_config_says_what_to_pass(tmp_path, record_data):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(record_data))
    result = vp("validate", str(path))
    assert result.returncode == 1
    assert "--config" in result.stderr


@pytest.mark.slow
def test_schemas_export_and_check(tmp_path, vp_here):
    out = tmp_path / "schemas"
    assert vp("schemas", "export", str(out)).returncode == 0
    assert (out / "PatientRecord.schema.json").is_file()
    assert vp_here("schemas", "export", str(out), "--check").returncode == 0
    (out / "TreatmentPlan.schema.json").write_text("{}")
    check = vp_here("schemas", "export", str(out), "--check")
    assert check.returncode == 1 and "TreatmentPlan.schema.json" in check.stdout


@pytest.mark.slow
def test_demo_writes_summary_plots_and_a_model(tmp_path):
    import inspect

    from vpatient.cli import demo as demo_command

    # the real demo trains 5 members to convergence; 2 members of 2 epochs run every step of it in a third of the time
    assert inspect.signature(demo_command).parameters["members"].default == 5
    result = vp("demo", "--out", str(tmp_path / "demo"), "--epochs", "2", "--members", "2")
    assert result.returncode == 0, result.stderr
    demo = tmp_path / "demo"
    assert (demo / "pbc2_km_by_arm.png").stat().st_size > 20_000  # a real figure, not an empty canvas
    assert (demo / "pbc2_forecast_patient4.png").stat().st_size > 20_000
    members = sorted(p.name for p in (demo / "pbc2_model").glob("weights*.pt"))
    assert members == ["weights-1.pt", "weights.pt"] and "an ensemble of 2" in result.stdout
    assert "| subjects | 312 |" in (demo / "pbc2_summary.md").read_text()
    assert (demo / "pbc2_whatif_patient4.png").stat().st_size > 20_000
    assert "rmst:death" in (demo / "pbc2_whatif_patient4.md").read_text()
    assert (demo / "pbc2_trial" / "trial.png").stat().st_size > 20_000
    assert (demo / "pbc2_model" / "population.json").is_file()
    assert "Hazard ratios against placebo" in result.stdout


@pytest.mark.slow
def test_export_validate_and_show_a_meds_directory(tmp_path, vp_here):
    out = tmp_path / "pbc_meds"
    exported = vp("datasets", "export", "pbc2", str(out))
    assert exported.returncode == 0, exported.stderr
    assert (out / "metadata" / "vpatient_config.json").is_file()
    checked = vp_here("validate", str(out))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "valid (312 subjects, 0 errors" in checked.stdout
    shown = vp_here("datasets", "show", str(out))
    assert "| death | 140 | 71 | 69 |" in shown.stdout
    again = vp_here("datasets", "export", "pbc2", str(out))
    assert again.returncode == 1 and "overwrite" in again.stderr.lower()


@pytest.mark.slow
def test_validate_lists_every_problem_of_a_bad_meds_file(tmp_path, vp_here):
    import pandas as pd

    from vpatient.datasets import load_pbc2

    cohort = load_pbc2()
    config_path = tmp_path / "pbc2.json"
    cohort.config.save(config_path)
    out = tmp_path / "meds"
    assert vp("datasets", "export", "pbc2", str(out)).returncode == 0
    shards = sorted((out / "data").rglob("*.parquet"))
    frame = pd.concat([pd.read_parquet(p) for p in shards], ignore_index=True)
    frame.loc[frame.index[frame["code"] == "LAB//BILIRUBIN"][:3], "numeric_value"] = float("nan")
    frame.loc[frame.index[frame["code"] == "LAB//ALBUMIN"][0], "numeric_value"] = -4.0
    frame = pd.concat([frame, frame.iloc[[5, 6, 7]].assign(code="LAB//MYSTERY")], ignore_index=True)
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    result = vp_here("validate", str(bad), "--config", str(config_path))
    assert result.returncode == 1
    assert result.stdout.count("LAB//BILIRUBIN") >= 3  # each missing value located
    assert "albumin" in result.stdout and "-4.0" in result.stdout
    assert result.stdout.count("LAB//MYSTERY") == 1 and "3 rows" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_train_then_forecast_from_the_command_line(tmp_path, vp_here):
    model_dir = tmp_path / "model"
    trained = vp(
        "train", "--data", "synthetic", "--epochs", "2", "--members", "2", "--seed", "1", "--out", str(model_dir), "--no-progress"
    )
    assert trained.returncode == 0, trained.stderr
    assert "trained 2 members, each on a bootstrap resample" in trained.stdout
    assert (model_dir / "weights.pt").is_file() and (model_dir / "weights-1.pt").is_file()
    assert (model_dir / "training_curve.png").is_file() and (model_dir / "members.json").is_file()
    out_json, out_png = tmp_path / "f.json", tmp_path / "f.png"
    result = vp(
        "forecast",
        "--model",
        str(model_dir),
        "--patient",
        "syn00003",
        "--until",
        "1.0",
        "--horizon",
        "2",
        "--n-samples",
        "20",
        "--json",
        str(out_json),
        "--plot",
        str(out_png),
    )
    assert result.returncode == 0, result.stderr
    assert "| time | variable | median | q05 | q95 |" in result.stdout
    assert "forecast from t = 1.00 years, horizon 2 years" in result.stdout  # times in the config's unit, named
    payload = json.loads(out_json.read_text())
    assert payload["subject_id"] == "syn00003" and payload["variables"] and payload["survival"]
    assert out_png.stat().st_size > 20_000
    missing = vp_here("forecast", "--model", str(model_dir), "--patient", "nobody")
    assert missing.returncode == 1 and "no subject 'nobody'" in missing.stderr
    no_model = vp_here("forecast", "--model", str(tmp_path / "absent"), "--patient", "1")
    assert no_model.returncode == 1 and "no model directory" in no_model.stderr


@pytest.mark.slow
def test_train_settings_from_options_and_file_reach_the_checkpoint(tmp_path, vp_here):
    """Every training option lands in the saved settings; the command line beats the file; the time limit stops on time."""
    from vpatient.data.meds import write_meds
    from vpatient.datasets import synthetic_cohort

    cohort = synthetic_cohort(n=24, seed=0, imaging_dim=2)
    data = write_meds(cohort.records, cohort.config, tmp_path / "meds")
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps({"learning_rate": 0.5, "hidden": 16, "lr_patience": 3, "epochs": 3}))
    model_dir = tmp_path / "model"
    trained = vp(
        "train", "--data", str(data), "--out", str(model_dir), "--settings", str(settings_file), "--members", "1",
        "--learning-rate", "0.01", "--batch-size", "8", "--patience", "7", "--step", "0.5", "--max-minutes", "0.0001",
        "--threads", "1", "--seed", "3", "--no-progress",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    meta = json.loads((model_dir / "model.json").read_text())
    unset = {"validation_fraction": None, "weight_decay": None, "full_history_fraction": None, "covariates_only_fraction": None}
    assert meta["train_settings"] | unset == {
        "epochs": 3,  # from the file
        "learning_rate": 0.01,  # the command line overrides the file's 0.5
        "batch_size": 8,
        "patience": 7,
        "lr_patience": 3,  # from the file
        "max_minutes": 0.0001,
        "threads": 1,
        "seed": 3,
        "members": 1,
        "validation_fraction": None,
        "weight_decay": None,
        "full_history_fraction": None,
        "covariates_only_fraction": None,
    }
    assert meta["model_settings"]["step"] == 0.5 and meta["model_settings"]["hidden"] == 16
    history = json.loads((model_dir / "training.json").read_text())
    # the limit (6 ms) passes within the first epoch, so training stops after it, not at the file's 3 epochs
    assert history["stopped_on_time"] is True and len(history["train_loss"]) == 1
    assert history["warnings"] == []
    assert "stopped on time at the 0.0001-minute limit, keeping the best weights" in trained.stdout

    settings_file.write_text(json.dumps({"learning_rat": 0.5}))
    refused = vp_here("train", "--data", str(data), "--out", str(tmp_path / "never"), "--settings", str(settings_file))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"settings file {settings_file}: unknown key 'learning_rat'" in refused.stderr
    assert not (tmp_path / "never").exists()
    settings_file.write_text(json.dumps({"batch_size": 0}))
    refused = vp_here("train", "--data", str(data), "--out", str(tmp_path / "never"), "--settings", str(settings_file))
    assert refused.returncode == 1 and "batch_size = 0: Input should be greater than or equal to 1" in refused.stderr
    refused = vp_here("train", "--data", str(data), "--out", str(tmp_path / "never"), "--learning-rate", "0")
    assert refused.returncode == 1 and "learning_rate = 0.0: Input should be greater than 0" in refused.stderr
    assert not (tmp_path / "never").exists()
