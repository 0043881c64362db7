"""``vpatient benchmark kill-safety``: every command that writes, SIGKILLed at random moments, then its output checked.

Each writing command runs as a subprocess (``python -m vpatient ...``, as a user runs it)
in a scratch folder on tiny inputs. Its run time is measured once; then, ``kills`` times,
it is started again and its process group SIGKILLed after a delay drawn uniformly over
that run time. The output path must then hold either exactly what it held before (the
previous complete output, or nothing) or a complete new output; anything else is corrupt.
After each kill the command is rerun and must succeed: a stray staging folder or lock
that a rerun trips on shows up here. Half the kills start from no output, half over the
previous run's complete output, and each run gets its own ``--seed`` where the command
takes one, so a new output differs from the previous one.

POSIX only (process groups and SIGKILL).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from vpatient.benchmarks.base import StrictModel, VersionedBenchmarkResult, targets_table
from vpatient.errors import VPatientError

__all__ = [
    "COMMANDS",
    "CommandKills",
    "Inputs",
    "KillSafetyResult",
    "WritingCommand",
    "kill_loop",
    "make_inputs",
    "run_kill_safety",
]

#: Subjects in the tiny dataset the commands read and the cohorts they simulate: enough to train, fast to write.
TINY_N = 20


@dataclass(frozen=True)
class Inputs:
    """The small inputs the commands read, made once per benchmark run in ``root``."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def plans(self) -> tuple[Path, Path]:
        return self.root / "none.json", self.root / "drug.json"

    @functools.cached_property
    def patient(self) -> str:
        """The first subject of the tiny dataset, whose report is written."""
        from vpatient.data.meds import read_meds

        return read_meds(self.data)[0].subject_id


@dataclass(frozen=True)
class WritingCommand:
    """A command that writes: its arguments (given the inputs, the output path and a seed) and what a complete output is."""

    name: str
    args: Callable[[Inputs, Path, int], list[str]]
    is_complete: Callable[[Path], bool]
    output: str
    needs: Literal["model", "data", "nothing"] = "model"  # the inputs it reads


def _trial_arms(inputs: Inputs) -> list[str]:
    none, drug = inputs.plans
    return ["--arm", f"none={none}", "--arm", f"drug={drug}"]


def _model_loads(path: Path) -> bool:
    from vpatient.simulation import Simulator

    return Simulator.load(path).population is not None


def _meds_reads(path: Path) -> bool:
    from vpatient.data.meds import read_meds

    return len(read_meds(path)) > 0


def _fhir_complete(path: Path) -> bool:
    """A FHIR NDJSON folder: every line of every file is a whole resource, and there are patients."""
    for file in path.glob("*.ndjson"):
        for line in file.read_text(encoding="utf-8").splitlines():
            json.loads(line)
    return (path / "Patient.ndjson").stat().st_size > 0


def _cohort_complete(path: Path) -> bool:
    """A virtual cohort: its MEDS directory reads back, with the manifest written last."""
    json.loads((path / "simulation.json").read_text(encoding="utf-8"))
    return _meds_reads(path / "meds")


def _fhir_cohort_complete(path: Path) -> bool:
    """A virtual cohort written as FHIR: its NDJSON folder is whole, with the manifest written last."""
    json.loads((path / "simulation.json").read_text(encoding="utf-8"))
    return _fhir_complete(path / "fhir") and not any(p.is_dir() for p in (path / "fhir").iterdir())  # chunk parts joined


def _trial_complete(path: Path) -> bool:
    import pandas as pd

    json.loads((path / "trial.json").read_text(encoding="utf-8"))
    for name in ("kaplan_meier", "model_survival", "hazard_ratios", "rmst", "trajectories"):  # TrialResult.save's tables
        pd.read_csv(path / f"{name}.csv")
    return (path / "trial.md").stat().st_size > 0 and (path / "trial.png").read_bytes().startswith(b"\x89PNG")


def _html_complete(path: Path) -> bool:
    return path.read_text(encoding="utf-8").rstrip().endswith("</html>")


def _schemas_complete(path: Path) -> bool:
    # the command's own drift check (schema_export imports every benchmark, this one included)
    return _run(["schemas", "export", str(path), "--check"], path.parent)[0]


def _result_complete(path: Path) -> bool:
    result = KillSafetyResult.model_validate_json((path / "kill-safety.json").read_text(encoding="utf-8"))
    return (path / "kill-safety.md").read_text(encoding="utf-8") == result.to_markdown()


#: Every command that writes, by the name ``--commands`` takes, in the order they run.
COMMANDS: dict[str, WritingCommand] = {
    c.name: c
    for c in (
        WritingCommand(
            "train",
            lambda i, out, seed: ["train", "--data", str(i.data), "--epochs", "1", "--members", "1", "--seed", str(seed),
                                  "--no-progress", "--out", str(out)],
            _model_loads, "model", needs="data",
        ),
        WritingCommand(
            "simulate-cohort",
            lambda i, out, seed: ["simulate", "cohort", "--model", str(i.model), "--n", str(TINY_N), "--years", "2",
                                  "--seed", str(seed), "--overwrite", "--no-progress", "--out", str(out)],
            _cohort_complete, "cohort",
        ),
        WritingCommand(
            "simulate-cohort-fhir",
            lambda i, out, seed: ["simulate", "cohort", "--model", str(i.model), "--n", str(TINY_N), "--years", "2",
                                  "--seed", str(seed), "--overwrite", "--no-progress", "--format", "fhir", "--chunk-size",
                                  str(TINY_N // 2), "--out", str(out)],
            _fhir_cohort_complete, "cohort-fhir",
        ),
        WritingCommand(
            "simulate-trial",
            lambda i, out, seed: ["simulate", "trial", "--model", str(i.model), *_trial_arms(i), "--n", str(TINY_N),
                                  "--years", "2", "--seed", str(seed), "--no-progress", "--out", str(out)],
            _trial_complete, "trial",
        ),
        WritingCommand(
            "report-patient",
            lambda i, out, seed: ["report", "patient", "--model", str(i.model), "--data", str(i.data), "--patient",
                                  i.patient, "--plan", str(i.plans[1]), "--n-samples", "8", "--seed", str(seed),
                                  "--out", str(out)],
            _html_complete, "patient.html",
        ),
        WritingCommand(
            "report-trial",
            lambda i, out, seed: ["report", "trial", "--model", str(i.model), *_trial_arms(i), "--n", str(TINY_N),
                                  "--years", "2", "--seed", str(seed), "--out", str(out)],
            _html_complete, "trial.html",
        ),
        WritingCommand(
            "report-model",
            lambda i, out, seed: ["report", "model", "--model", str(i.model), "--out", str(out)],
            _html_complete, "card.html",
        ),
        WritingCommand(
            "datasets-export",
            lambda i, out, seed: ["datasets", "export", "synthetic", str(out), "--n", str(TINY_N), "--seed", str(seed),
                                  "--overwrite"],
            _meds_reads, "meds", needs="nothing",
        ),
        WritingCommand(
            "datasets-export-fhir",
            lambda i, out, seed: ["datasets", "export", "synthetic", str(out), "--n", str(TINY_N), "--seed", str(seed),
                                  "--overwrite", "--format", "fhir"],
            _fhir_complete, "fhir", needs="nothing",
        ),
        WritingCommand(
            "schemas-export",
            lambda i, out, seed: ["schemas", "export", str(out)],
            _schemas_complete, "schemas", needs="nothing",
        ),
        WritingCommand(
            "benchmark-write",
            lambda i, out, seed: ["benchmark", "kill-safety", "--commands", "schemas-export", "--kills", "1", "--seed",
                                  str(seed), "--out-dir", str(out)],
            _result_complete, "results", needs="nothing",
        ),
    )
}  # fmt: skip


class CommandKills(StrictModel):
    """One command's kills: what each left at the output path, and whether the rerun after it succeeded."""

    command: str
    kills: int
    previous: int  # the output path held exactly what it held before (the previous output, or nothing)
    new: int  # a complete new output (the kill came after the final rename, or after the command ended)
    corrupt: int  # anything else: a half-written file, a partial folder, a mixture
    reruns_ok: int
    ended_before_kill: int  # the command ended before its kill came (the run was quicker than the shortest seen)
    stray_staging: int  # hidden staging entries (.NAME.XXXX.tmp) beside or inside the output after the last rerun
    run_seconds: float  # the shortest full run (the first, then the reruns); each kill delay is uniform over it
    seconds: float  # the whole loop, kills and reruns
    error: str | None = None  # the command failed on its own before any kill (then nothing was killed)
    corrupt_examples: list[str] = Field(default_factory=list)


class KillSafetyResult(VersionedBenchmarkResult):
    """Kill safety of every writing command: SIGKILL at random moments, zero corrupt outputs is the target."""

    benchmark: Literal["kill-safety"] = "kill-safety"
    seed: int
    kills_per_command: int
    commands: list[CommandKills]
    runtime_seconds: float

    @property
    def passed(self) -> bool:
        """Every command ran, no kill left a corrupt output and every rerun succeeded."""
        return all(c.error is None and c.corrupt == 0 and c.reruns_ok == c.kills for c in self.commands)

    def to_markdown(self) -> str:
        import pandas as pd

        from vpatient.tables import markdown_table

        rows = pd.DataFrame([c.model_dump(exclude={"corrupt_examples", "error"}) for c in self.commands])
        lines = [
            "# Kill safety: every writing command, SIGKILLed at random moments",
            "",
            f"vpatient {self.vpatient_version}; {self.kills_per_command} kills per command, seed {self.seed}; "
            f"{self.runtime_seconds:.0f} s in all. Each kill lands uniformly over the command's measured run time; "
            "then the output must be the previous one (or none) or a complete new one, and a rerun must succeed.",
            "",
            markdown_table(rows, index=False),
            "",
        ]
        problems = [f"- {c.command}: {c.error}" for c in self.commands if c.error]
        problems += [f"- {c.command}: {example}" for c in self.commands for example in c.corrupt_examples]
        if problems:
            lines += ["## Problems", "", *problems, ""]
        targets = [
            ("commands that ran", sum(c.error is None for c in self.commands), f"= {len(self.commands)}",
             all(c.error is None for c in self.commands)),
            ("corrupt outputs", sum(c.corrupt for c in self.commands), "= 0", all(c.corrupt == 0 for c in self.commands)),
            ("failed reruns", sum(c.kills - c.reruns_ok for c in self.commands), "= 0",
             all(c.reruns_ok == c.kills for c in self.commands)),
        ]  # fmt: skip
        lines += ["## Targets", "", targets_table(targets), ""]
        return "\n".join(lines)


def _snapshot(path: Path) -> dict[str, str] | None:
    """SHA-256 of every file at ``path`` (a file or a folder, hidden staging entries left out); None when absent."""
    if not path.exists():
        return None
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file() and not _is_staging(f.relative_to(path))
    }


def _is_staging(relative: Path) -> bool:
    return any(part.startswith(".") and (".tmp" in part or part.endswith(".old")) for part in relative.parts)


def _stray_staging(out: Path) -> int:
    beside = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    inside = [p for p in out.rglob(".*") if _is_staging(p.relative_to(out))] if out.is_dir() else []
    return len(beside) + len(inside)


def _environment(scratch: Path) -> dict[str, str]:
    """The subprocess environment: temporary files inside the scratch folder, so a killed run's leftovers go with it."""
    tmp = scratch / "tmp"
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def _cli(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "vpatient", *args]


def _run(args: Sequence[str], cwd: Path) -> tuple[bool, str, float]:
    """Run the command to its end; (succeeded, its last line of error output, seconds it took)."""
    started = time.perf_counter()
    done = subprocess.run(_cli(args), cwd=cwd, env=_environment(cwd), capture_output=True, text=True, check=False)
    last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or [""]
    return done.returncode == 0, last[0][:300], time.perf_counter() - started


def _run_and_kill(args: Sequence[str], cwd: Path, delay: float) -> bool:
    """Start the command in its own process group and SIGKILL the group after ``delay`` seconds; False if it ended first."""
    proc = subprocess.Popen(
        _cli(args), cwd=cwd, env=_environment(cwd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def _outcome(command: WritingCommand, out: Path, before: dict[str, str] | None) -> str:
    """previous, new, or corrupt with what was found (for the result's examples)."""
    after = _snapshot(out)
    if after == before:
        return "previous"
    try:
        if command.is_complete(out):
            return "new"
        return f"corrupt: incomplete ({len(after or {})} files, {len(before or {})} before)"
    except Exception as exc:  # any failure to read it back is what corrupt means here
        return f"corrupt: {type(exc).__name__}: {str(exc)[:200]}"


def make_inputs(root: Path, needs: set[str]) -> Inputs:
    """The plans and, when a command reads them, the tiny dataset and model, made by the CLI itself."""
    inputs = Inputs(root)
    root.mkdir(parents=True, exist_ok=True)
    none, drug = inputs.plans
    none.write_text(json.dumps({"name": "none"}), encoding="utf-8")
    drug.write_text(
        json.dumps({"name": "drug", "exposures": [{"treatment": "drug", "start": 0.0, "dose": 1.0}]}), encoding="utf-8"
    )
    steps = []
    if needs & {"data", "model"}:
        steps.append(COMMANDS["datasets-export"].args(inputs, inputs.data, 0))
    if "model" in needs:
        steps.append(COMMANDS["train"].args(inputs, inputs.model, 0))
    for args in steps:
        ok, last, _ = _run(args, root)
        if not ok:
            raise VPatientError(f"kill-safety: preparing the inputs failed: vpatient {' '.join(args)}: {last}")
    return inputs


def kill_loop(command: WritingCommand, inputs: Inputs, scratch: Path, kills: int, rng: np.random.Generator) -> CommandKills:
    """``kills`` random SIGKILLs of ``command`` run in ``scratch``, each followed by a rerun; the counts."""
    started = time.perf_counter()
    out = scratch / command.output
    ok, last, run_seconds = _run(command.args(inputs, scratch / "measured" / command.output, 0), scratch)
    counts = {"previous": 0, "new": 0, "corrupt": 0, "reruns_ok": 0, "ended_before_kill": 0}
    examples: list[str] = []
    if not ok:
        return CommandKills(command=command.name, kills=0, previous=0, new=0, corrupt=0, reruns_ok=0, ended_before_kill=0,
                            stray_staging=0, run_seconds=round(run_seconds, 2), seconds=round(run_seconds, 2),
                            error=last)  # fmt: skip
    for k in range(kills):
        if k % 2 == 0 and out.exists():  # half the kills start from no output
            _remove(out)
        before = _snapshot(out)
        args = command.args(inputs, out, k + 1)
        # uniform over the shortest full run seen: the first run pays for cold caches, and a delay past the end kills nothing
        counts["ended_before_kill"] += not _run_and_kill(args, scratch, float(rng.uniform(0.0, run_seconds)))
        outcome = _outcome(command, out, before)
        key = outcome.split(":")[0]
        counts[key] += 1
        if key == "corrupt" and len(examples) < 5:
            examples.append(f"kill {k + 1}: {outcome}")
        rerun_ok, last, seconds = _run(args, scratch)
        counts["reruns_ok"] += rerun_ok
        run_seconds = min(run_seconds, seconds) if rerun_ok else run_seconds
        if not rerun_ok and len(examples) < 5:
            examples.append(f"rerun after kill {k + 1} failed: {last}")
    return CommandKills(
        command=command.name, kills=kills, **counts, stray_staging=_stray_staging(out), run_seconds=round(run_seconds, 2),
        seconds=round(time.perf_counter() - started, 2), corrupt_examples=examples,
    )  # fmt: skip


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def run_kill_safety(
    commands: Sequence[str] | None = None, kills: int = 50, seed: int = 0, progress: Callable[[str], None] | None = None
) -> KillSafetyResult:
    """Kill every named command (default: all of :data:`COMMANDS`) ``kills`` times; the counts per command."""
    if not hasattr(os, "killpg"):
        raise VPatientError("the kill-safety benchmark needs POSIX process groups (Linux or macOS)")
    names = list(COMMANDS) if commands is None else list(commands)
    unknown = [n for n in names if n not in COMMANDS]
    if unknown or not names:
        raise VPatientError(f"unknown command(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(COMMANDS)}")
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="vpatient-kill-safety-") as tmp:
        root = Path(tmp)
        inputs = make_inputs(root, {COMMANDS[n].needs for n in names})
        for name in names:
            scratch = root / name
            scratch.mkdir()
            rng = np.random.default_rng([seed, list(COMMANDS).index(name)])  # the same delays whichever others run
            rows.append(kill_loop(COMMANDS[name], inputs, scratch, kills, rng))
            if progress is not None:
                progress(f"{name}: {rows[-1].model_dump_json(exclude={'corrupt_examples'})}")
    return KillSafetyResult(
        seed=seed, kills_per_command=kills, commands=rows, runtime_seconds=round(time.perf_counter() - started, 2)
    )
