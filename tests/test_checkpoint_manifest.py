"""Checkpoint integrity: manifest.json records the SHA-256 of every file the loader reads, and load checks it."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from vpatient.manifest import MANIFEST_FILE, add_to_manifest
from vpatient.virtual_patient import CheckpointError, VirtualPatientModel


@pytest.fixture()
def model_copy(untrained_model_dir, tmp_path):
    return shutil.copytree(untrained_model_dir, tmp_path / "model")


def test_the_manifest_lists_every_file_the_loader_reads(model_copy):
    manifest = json.loads((model_copy / MANIFEST_FILE).read_text())
    assert manifest["algorithm"] == "sha256"
    assert set(manifest["files"]) == {"weights.pt", "config.json", "model.json", "scalers.json"}
    assert VirtualPatientModel.load(model_copy).n_members == 1


def test_one_changed_byte_of_the_weights_is_refused_naming_the_file(model_copy):
    weights = model_copy / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit inside the tensor data: torch would still load it
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"weights\.pt is corrupted or was changed"):
        VirtualPatientModel.load(model_copy)


@pytest.mark.parametrize("name", ["scalers.json", "config.json"])
def test_a_changed_json_file_is_refused_naming_it(model_copy, name):
    path = model_copy / name
    path.write_text(path.read_text().replace("1", "2", 1))
    with pytest.raises(CheckpointError, match=re.escape(f"{name} is corrupted or was changed")):
        VirtualPatientModel.load(model_copy)


@pytest.mark.parametrize("name", ["weights.pt", "training.json", MANIFEST_FILE])
def test_a_partly_copied_model_is_refused_naming_the_missing_file(model_copy, name):
    if name == "training.json":  # an optional file a trained model has: the manifest makes it required
        (model_copy / name).write_text("{}")
        manifest = json.loads((model_copy / MANIFEST_FILE).read_text())
        manifest["files"][name] = "0" * 64
        (model_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    (model_copy / name).unlink()
    with pytest.raises(CheckpointError, match=re.escape(f"not a complete vpatient checkpoint: {name} is missing")):
        VirtualPatientModel.load(model_copy)


def test_a_population_added_later_is_checked_when_present_and_may_be_deleted(model_copy):
    population = model_copy / "population.json"
    population.write_text('{"placeholder": 1}\n')
    add_to_manifest(model_copy, "population.json")
    VirtualPatientModel.load(model_copy)
    population.write_text('{"placeholder": 2}\n')
    with pytest.raises(CheckpointError, match=r"population\.json is corrupted or was changed"):
        VirtualPatientModel.load(model_copy)
    population.unlink()  # deleting it is allowed: the simulator fits it again
    VirtualPatientModel.load(model_copy)


def test_a_model_saved_before_manifests_still_loads(model_copy):
    (model_copy / MANIFEST_FILE).unlink()
    meta = json.loads((model_copy / "model.json").read_text())
    del meta["manifest"]
    (model_copy / "model.json").write_text(json.dumps(meta))
    assert VirtualPatientModel.load(model_copy).n_members == 1
    add_to_manifest(model_copy, "model.json")  # adding to an old checkpoint leaves it without a manifest
    assert not (model_copy / MANIFEST_FILE).exists()


# ---------------------------------------------------------------- without a manifest, every file is parsed with care
# Cases the checkpoint fuzzing found (tests/test_fuzz_parsers.py): each was a raw exception, a silent acceptance of
# garbage, or gigabytes allocated, before the refusal that names the file.


def _as_legacy(model_copy, edit_meta=lambda meta: None):
    (model_copy / MANIFEST_FILE).unlink()
    meta = json.loads((model_copy / "model.json").read_text())
    del meta["manifest"]
    edit_meta(meta)
    (model_copy / "model.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(("setting", "value"), [("latent_dim", 10**9), ("hidden", 0), ("step", "fast"), ("solver", "euler-ish")])
def test_model_settings_out_of_range_are_refused_before_building_the_network(model_copy, setting, value):
    _as_legacy(model_copy, lambda meta: meta["model_settings"].update({setting: value}))
    with pytest.raises(CheckpointError, match=rf"model\.json: settings: {setting} = "):
        VirtualPatientModel.load(model_copy)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (
            lambda s: s.update(continuous_std=[0.0] * len(s["continuous_std"])),
            "continuous_std must be a list of finite numbers, all > 0",
        ),
        (lambda s: s.update(static_mean=s["static_mean"][:-1]), "static_mean and static_std differ in length"),
        (lambda s: s.update(median_followup=-1.0), "median_followup = -1.0 is not a positive time"),
        (lambda s: s.update(continuous_mean=[], continuous_std=[]), "does not match the variables of"),
    ],
)
def test_damaged_scalers_are_refused_naming_the_file(model_copy, edit, reason):
    _as_legacy(model_copy)
    scalers = json.loads((model_copy / "scalers.json").read_text())
    edit(scalers)
    (model_copy / "scalers.json").write_text(json.dumps(scalers))
    with pytest.raises(CheckpointError, match=r"scalers\.json: .*" + re.escape(reason)):
        VirtualPatientModel.load(model_copy)


@pytest.mark.parametrize("text", ["[1, 2]", '{"train_loss": "many"', '{"best_epoch": 1, "unknown": 2}'])
def test_a_damaged_training_history_is_refused_naming_it(model_copy, text):
    _as_legacy(model_copy)
    (model_copy / "training.json").write_text(text)
    with pytest.raises(CheckpointError, match=r"training\.json"):
        VirtualPatientModel.load(model_copy)


def test_a_population_model_with_a_huge_integer_or_wrong_shapes_is_refused_naming_it(tmp_path):
    from vpatient.errors import VPatientError
    from vpatient.simulation import Population

    good = {
        "posterior_dim": 1, "static": [], "static_low": [], "static_high": [], "static_categories": {}, "arms": {"none": 1.0},
        "mixtures": [{"*": {"weights": [1.0], "means": [[0.0]], "covariances": [[[1.0]]]}}],
        "exposure_templates": {"none": [[]]}, "visit_templates": [[0.0, 1.0]], "template_followup": [1.0],
        "resolution": {}, "median_visit_gap": 0.5, "visits_per_year": 2.0, "observed_share": {},
        "censoring_times": [], "censoring_survival": [], "max_followup": 1.0, "n_training_patients": 10, "seed": 0,
    }  # fmt: skip
    path = tmp_path / "population.json"
    path.write_text(json.dumps(good))
    assert Population.load(path).posterior_dim == 1
    bad = [
        ('"seed": 0', '"seed": 1' + "0" * 4400, "not usable JSON"),
        ('"covariances": [[[1.0]]]', '"covariances": [[[-1.0]]]', "not positive definite"),
        ('"means": [[0.0]]', '"means": [[0.0, 1.0]]', "does not have 1 dimensions"),
        ('"weights": [1.0]', '"weights": ["heavy"]', "mixtures.0.*.weights.0"),
        ('"exposure_templates": {"none": [[]]}', '"exposure_templates": {"none": [[{"dose": 1}]]}', "not a treatment"),
    ]
    for old, new, reason in bad:
        path.write_text(json.dumps(good).replace(old, new))
        with pytest.raises(VPatientError, match=re.escape(str(path)) + ".*" + re.escape(reason)):
            Population.load(path)
