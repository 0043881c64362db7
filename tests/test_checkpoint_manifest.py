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
