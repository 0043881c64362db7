"""Streamed training data (issue 15): MEDS shards read a buffer at a time give what the in-memory path gives."""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from vpatient.cli import app
from vpatient.data.batching import Scalers, make_batch
from vpatient.data.meds import read_meds, write_meds
from vpatient.data.meds.stream_write import write_meds_stream
from vpatient.data.synthetic import synthetic_cohort, synthetic_config, synthetic_stream
from vpatient.errors import DataFormatError
from vpatient.model.batch import PatientBatch
from vpatient.train import InMemoryData, Rank, TrainSettings, split_positions, train_network
from vpatient.train.shard_cache import ShardCache
from vpatient.train.stream import StreamedData, streamed_scalers

N, FRACTION, SEED = 60, 0.15, 4


@pytest.fixture(scope="module")
def meds(tmp_path_factory):
    """60 synthetic subjects in shards of 16 (the last of 12), their records as read_meds gives them, and a cache in blocks of 7."""
    root = tmp_path_factory.mktemp("streaming")
    cohort = synthetic_cohort(N, 3, imaging_dim=4)
    write_meds(cohort.records, cohort.config, root / "meds", subjects_per_shard=16)
    cache = ShardCache.build(root / "meds", root / "cache", block_patients=7, sample_patients=10)
    return root, read_meds(root / "meds"), cohort.config, cache


def assert_same_batch(a: PatientBatch, b: PatientBatch) -> None:
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, list):
            assert x == y, field.name
        else:
            assert x.shape == y.shape and torch.equal(x, y), field.name


def split(records, bootstrap=False):
    validation, train = split_positions(len(records), FRACTION, SEED, bootstrap)
    return [records[i] for i in train], [records[i] for i in validation]


def streamed(cache, **options) -> StreamedData:
    return StreamedData(cache, seed=SEED, validation_fraction=FRACTION, **options)


def epoch_ids(data, batch_size=8, seed=0) -> list[list[str]]:
    return [step.batch.subject_ids for step in data.steps(torch.Generator().manual_seed(seed), batch_size)]


def test_one_buffer_yields_the_in_memory_batches_and_training(meds):
    _, records, config, cache = meds
    train, validation = split(records)
    scalers = Scalers.fit(train, config)
    memory = InMemoryData(make_batch(train, config, scalers), make_batch(validation, config, scalers))
    stream = streamed(cache, scalers=scalers, buffer_patients=10_000)
    assert stream.validation_ids == memory.validation_ids == [r.subject_id for r in validation]
    assert (stream.n_train, stream.n_validation) == (memory.n_train, memory.n_validation)
    for _ in range(2):  # two epochs: the same draws from the loop's generator
        a = list(memory.steps(torch.Generator().manual_seed(1), 8))
        b = list(stream.steps(torch.Generator().manual_seed(1), 8))
        assert len(a) == len(b) == 7
        for x, y in zip(a, b, strict=True):
            assert_same_batch(x.batch, y.batch)
            assert y.rows is None and y.share == 1.0
    assert_same_batch(next(memory.validation_batches()), next(stream.validation_batches()))
    assert_same_batch(memory.check_batch(), stream.check_batch())
    settings = TrainSettings(epochs=1, seed=SEED, validation_fraction=FRACTION, batch_size=16)
    _, h_memory = train_network(memory, config, scalers, settings, progress=False)
    _, h_stream = train_network(streamed(cache, scalers=scalers), config, scalers, settings, progress=False)
    assert (h_stream.train_loss, h_stream.validation_loss) == (h_memory.train_loss, h_memory.validation_loss)


@pytest.mark.parametrize("bootstrap", [False, True])
def test_streamed_scalers_equal_scalers_fit(meds, bootstrap):
    _, records, config, cache = meds
    train, _ = split(records, bootstrap)
    expected = Scalers.fit(train, config)
    got = streamed(cache, bootstrap=bootstrap).scalers
    for name in ("continuous_mean", "continuous_std", "imaging_mean", "imaging_std", "static_mean", "static_std"):
        np.testing.assert_allclose(getattr(got, name), getattr(expected, name), rtol=1e-12, atol=1e-13, err_msg=name)
    assert (got.time_scale, got.median_followup) == (expected.time_scale, expected.median_followup)
    everyone = streamed_scalers(cache, np.ones(len(cache), dtype=np.int64))  # what an ensemble shares
    np.testing.assert_allclose(everyone.continuous_mean, Scalers.fit(records, config).continuous_mean, rtol=1e-12)


def test_bounded_buffer_gives_every_training_subject_once_per_epoch(meds):
    _, records, _, cache = meds
    train, _ = split(records)
    data = streamed(cache, buffer_patients=16)
    epochs = [epoch_ids(data), epoch_ids(data)]
    for steps in epochs:
        assert [len(s) for s in steps] == [8] * 6 + [3]
        assert sorted(sid for batch in steps for sid in batch) == sorted(r.subject_id for r in train)
    assert epochs[0] != epochs[1]  # another shard order and shuffle each epoch


def test_bootstrap_trains_each_subject_as_often_as_the_resample_draws_it(meds):
    _, records, _, cache = meds
    train, _ = split(records, bootstrap=True)
    data = streamed(cache, bootstrap=True, buffer_patients=24)
    assert Counter(sid for batch in epoch_ids(data) for sid in batch) == Counter(r.subject_id for r in train)
    assert max(Counter(r.subject_id for r in train).values()) > 1


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_read_their_own_shards_and_take_the_same_steps(meds, world):
    _, records, _, cache = meds
    train, validation = split(records)
    ranks = [streamed(cache, rank=Rank(i, world), buffer_patients=16) for i in range(world)]
    for _ in range(2):
        steps = [list(r.steps(torch.Generator().manual_seed(i), 8)) for i, r in enumerate(ranks)]
        assert len({len(s) for s in steps}) == 1
        assert sorted(sid for s in steps for step in s for sid in step.batch.subject_ids) == sorted(r.subject_id for r in train)
        for together in zip(*steps, strict=True):
            assert all(step.rows is None for step in together)
            assert sum(step.share for step in together) == pytest.approx(1.0)
        assert [sum(len(step.batch) for step in together) for together in zip(*steps, strict=True)] == [8] * 6 + [3]
        shards = [{cache.shard_of_block[cache.block[np.flatnonzero(cache.subject_ids == sid)[0]]] for x in s for sid in x.batch.subject_ids} for s in steps]  # fmt: skip
        assert all(not (shards[i] & shards[j]) for i in range(world) for j in range(i))  # no shard read twice
    held = [sid for r in ranks for b in r.validation_batches() for sid in b.subject_ids]
    assert sorted(held) == sorted(r.subject_id for r in validation) and ranks[0].sharded_validation


def test_bad_input_is_a_clear_error(meds, tmp_path):
    root, _, config, _ = meds
    (tmp_path / "empty" / "data").mkdir(parents=True)
    with pytest.raises(DataFormatError, match="no parquet files"):
        ShardCache.build(tmp_path / "empty", tmp_path / "c1", config)
    broken = tmp_path / "broken"
    shutil.copytree(root / "meds", broken)
    shard = sorted((broken / "data").rglob("*.parquet"))[1]
    pq.write_table(pq.read_table(shard).drop_columns(["numeric_value"]), shard)
    with pytest.raises(DataFormatError, match=r"missing required MEDS column.*numeric_value"):
        ShardCache.build(broken, tmp_path / "c2", config)


def test_streamed_export_writes_standard_meds_that_reads_back(tmp_path):
    records = list(synthetic_stream(25, 7, chunk_size=10, imaging_dim=2))
    path, count = write_meds_stream(iter(records), synthetic_config(imaging_dim=2), tmp_path / "out", subjects_per_shard=10)
    assert count == 25 and len(list((path / "data").glob("*.parquet"))) == 3
    assert read_meds(path) == records
    result = CliRunner().invoke(app, ["datasets", "export", "synthetic", "--n", "12", "--stream", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "streamed" in result.output and len(read_meds(tmp_path / "cli")) == 12


def test_train_command_streams_a_meds_directory(meds, tmp_path):
    root, records, _, _ = meds
    command = ["train", "--data", str(root / "meds"), "--out", str(tmp_path / "model"), "--stream", "--members", "1"]
    result = CliRunner().invoke(app, [*command, "--epochs", "1", "--seed", str(SEED), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "streamed from 60 subjects (population model from a sample of 60)" in result.output
    from vpatient.virtual_patient import VirtualPatientModel

    model = VirtualPatientModel.load(tmp_path / "model")
    assert model.history is not None and model.history.validation_ids == [r.subject_id for r in split(records)[1]]
