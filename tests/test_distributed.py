"""Data-parallel training (vpatient.train.distributed): real gloo process groups of 2 ranks, started and stopped here.

- 2 ranks take the steps one process takes: the same weights within rounding, the same loss curves;
- rank 0 alone writes the checkpoint (the other rank, told to write elsewhere, writes nothing);
- ``vpatient train --nproc 2`` writes a checkpoint that loads; a killed rank stops the run with a
  clear message, every process ends and nothing is written, not even a staged folder.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from vpatient.data.formats import DataFormat, write_records
from vpatient.datasets import load_dataset
from vpatient.train.distributed import DistributedError, process_group

pytestmark = pytest.mark.skipif(os.name != "posix", reason="process groups and signals as on POSIX")

#: a few quick epochs of a small network on a small cohort: the same options for the ranks and for one process
OPTIONS = ["--members", "1", "--epochs", "2", "--batch-size", "8", "--threads", "1", "--seed", "3", "--no-progress"]


def _options(**changed: str) -> list[str]:
    """OPTIONS with some values changed (``epochs="500"``)."""
    values = dict(zip(OPTIONS[:-1:2], OPTIONS[1::2], strict=True))
    values |= {f"--{name.replace('_', '-')}": value for name, value in changed.items()}
    return [*(part for pair in values.items() for part in pair), OPTIONS[-1]]


ENV = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


@pytest.fixture(scope="module")
def meds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 synthetic patients as standard MEDS, the data every run here reads."""
    cohort = load_dataset("synthetic", seed=0, n=32)
    return write_records(cohort.records, cohort.config, tmp_path_factory.mktemp("data") / "meds", DataFormat.MEDS)


@pytest.fixture(scope="module")
def sharded_meds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 synthetic patients as standard MEDS in 4 shards: data the ranks stream, each its own shards."""
    from vpatient.data.meds.stream_write import write_meds_stream

    cohort = load_dataset("synthetic", seed=0, n=48)
    path, _ = write_meds_stream(cohort.records, cohort.config, tmp_path_factory.mktemp("data") / "meds", subjects_per_shard=12)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(index: int, world: int, ports: tuple[int, int], data: str, out: str) -> None:
    """One rank as torchrun would start it: its environment, then ``python -m vpatient.train`` (its own --out).

    Then, in a second group, a validation set split between the ranks (as a streaming
    source's is): its loss is that of all the patients.
    """
    os.environ.update(
        RANK=str(index), WORLD_SIZE=str(world), LOCAL_RANK=str(index), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]),
    )  # fmt: skip
    from vpatient.train.__main__ import main

    try:
        main(["--data", data, "--out", f"{out}/rank{index}", *OPTIONS])
    except SystemExit as done:  # the command's own exit, as from the command line
        assert done.code in (0, None), f"rank {index} exited {done.code}"
    os.environ["MASTER_PORT"] = str(ports[1])
    _check_sharded_validation(data)


def _check_sharded_validation(data: str) -> None:
    """Ranks that each evaluate their own validation patients (``sharded_validation``) agree on the loss of all of them."""
    from vpatient.data.batching import Scalers, layout_from_config, make_batch
    from vpatient.model.latent_ode import LatentODE
    from vpatient.train import InMemoryData, validation_loss
    from vpatient.train.loop import ranks_validation_loss

    class ShardedValidation(InMemoryData):
        sharded_validation = True

    cohort = load_dataset(data)
    scalers = Scalers.fit(cohort.records, cohort.config)
    batch = make_batch(cohort.records, cohort.config, scalers)
    parts = [batch.select(torch.arange(0, 12)), batch.select(torch.arange(12, len(batch)))]  # unequal: weighed by patients
    torch.manual_seed(0)
    network = LatentODE(layout_from_config(cohort.config), time_scale=scalers.time_scale)
    with process_group() as rank:
        mine = parts[rank.index]
        loss = ranks_validation_loss(network, ShardedValidation(mine, mine, rank), seed=3)
    # each rank's part as one process evaluates it, weighed by its patients
    expected = sum(validation_loss(network, [part], seed=3) * len(part) for part in parts) / len(batch)
    assert loss == pytest.approx(expected, rel=1e-12)


def test_two_gloo_ranks_train_the_weights_one_process_trains_and_rank_0_alone_writes_and_agree_on_sharded_validation(
    meds, tmp_path
):
    from vpatient.cli import app
    from vpatient.virtual_patient import VirtualPatientModel

    out = tmp_path / "ranks"
    out.mkdir()
    torch.multiprocessing.spawn(_rank, args=(2, (_free_port(), _free_port()), str(meds), str(out)), nprocs=2)
    # rank 1 was told to write rank1/ and wrote nothing; rank 0 wrote its checkpoint whole, no staged folder left
    assert sorted(p.name for p in out.iterdir()) == ["rank0"]
    two = VirtualPatientModel.load(out / "rank0")

    # one process, as `vpatient train` with the same options trains it
    app(["train", "--data", str(meds), "--out", str(tmp_path / "one"), *OPTIONS], standalone_mode=False)
    one = VirtualPatientModel.load(tmp_path / "one")
    assert two.history.n_train == one.history.n_train and two.history.best_epoch == one.history.best_epoch
    for curve in ("train_loss", "validation_loss"):
        assert getattr(two.history, curve) == pytest.approx(getattr(one.history, curve), rel=1e-6)
    mine, theirs = one.network.state_dict(), two.network.state_dict()
    for name, weight in mine.items():
        # the same steps; only the order of floating-point sums differs (2 ranks' halves, then their average)
        torch.testing.assert_close(theirs[name], weight, rtol=1e-4, atol=1e-5 * float(weight.abs().max()), msg=name)
    assert max(float((theirs[n] - w).abs().max()) for n, w in mine.items()) > 0  # really two computations, not one copied


def test_a_rank_started_with_a_bad_environment_is_refused_clearly(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(DistributedError, match="MASTER_ADDR"), process_group():
        pass
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.raises(DistributedError, match="RANK = 3 is not one of WORLD_SIZE = 2"), process_group():
        pass


@pytest.mark.slow  # a launcher and 2 ranks start Python and torch: about 15 s on 2 cores
def test_vpatient_train_nproc_2_streams_shards_and_writes_a_checkpoint_that_loads_members_one_after_another(
    sharded_meds, tmp_path
):
    from vpatient.virtual_patient import VirtualPatientModel

    command = [
        sys.executable,
        "-m",
        "vpatient",
        "train",
        "--nproc",
        "2",
        "--data",
        str(sharded_meds),
        "--out",
        str(tmp_path / "model"),
    ]
    options = [*_options(members="2"), "--stream", "--buffer-patients", "16"]  # each member by both ranks, each its own shards
    run = subprocess.run([*command, *options], env=ENV, capture_output=True, text=True, timeout=300)
    stdout, stderr = run.stdout, run.stderr
    assert run.returncode == 0, stderr
    assert stdout.count("wrote ") == 1, stdout  # rank 0 reports, once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    model = VirtualPatientModel.load(tmp_path / "model")
    assert model.n_members == 2 and [len(h.train_loss) for h in model.member_histories] == [2, 2]
    first, second = (member.state_dict() for member in model.members)
    assert not all(torch.equal(first[name], second[name]) for name in first)  # own seeds and resamples
    assert json.loads((tmp_path / "model" / "model.json").read_text())["train_settings"]["seed"] == 3


@pytest.mark.slow  # as above, and the ranks train until one is killed
def test_a_killed_rank_stops_every_process_with_a_clear_message_and_nothing_is_written(meds, tmp_path):
    options = _options(epochs="500")  # still training when the rank is killed
    command = [sys.executable, "-m", "vpatient", "--verbose", "train", "--nproc", "2", "--data", str(meds),
               "--out", str(tmp_path / "model"), *options]  # fmt: skip
    run = subprocess.Popen(command, env=ENV, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(run.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("epoch 1/500" in line for line in lines):  # rank 0 logs its first epoch: both ranks are training
            assert run.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        ranks = {
            p.environ()["RANK"]: p for p in psutil.Process(run.pid).children(recursive=True) if "vpatient.train" in p.cmdline()
        }
        ranks["1"].send_signal(signal.SIGKILL)
        assert run.wait(timeout=60) == 1
        reader.join(timeout=10)
        assert lines[-1].startswith("error: training rank 1 of 2 failed: Signal 9 (SIGKILL)"), "".join(lines)
        assert not any("Traceback" in line for line in lines), "".join(lines)
        _, alive = psutil.wait_procs(list(ranks.values()), timeout=10)
        assert not alive
        assert list(tmp_path.iterdir()) == []  # no checkpoint, no staged folder
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()


def test_every_process_gets_a_patient_of_every_step_held_in_memory():
    """A last mini-batch smaller than the processes joins the one before, so no rank computes an empty step."""
    from vpatient.data.batching import Scalers, make_batch
    from vpatient.train import InMemoryData, Rank

    cohort = load_dataset("synthetic", seed=0, n=11)
    batch = make_batch(cohort.records, cohort.config, Scalers.fit(cohort.records, cohort.config))
    for index in range(2):
        steps = list(InMemoryData(batch, None, Rank(index, 2)).steps(torch.Generator().manual_seed(0), batch_size=5))
        assert [len(s.batch) for s in steps] == [5, 6] and all(s.n_local >= 2 for s in steps)
    alone = list(InMemoryData(batch, None).steps(torch.Generator().manual_seed(0), batch_size=5))
    assert [len(s.batch) for s in alone] == [5, 5, 1]  # one process: the batches as before
