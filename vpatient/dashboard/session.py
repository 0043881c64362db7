"""The dashboard's state: the model it serves, requests, uploads, and a cache of results.

The Streamlit app (:mod:`vpatient.dashboard.app`) is thin: its widgets build the
request objects defined here (:class:`PlanSpec`, :class:`ForecastRequest`,
:class:`WhatIfRequest`, :class:`NextTestRequest`, :class:`TrialRequest`) and one :class:`DashboardSession` per
server computes them (the model, its dataset and a small cache of results, shared by
every browser session). Nothing here imports Streamlit, so all of it is testable
without a browser.

With no model given the app serves ``$VPATIENT_MODEL_DIR``, or the demo PBC model,
trained once and cached under ``$VPATIENT_HOME/pbc2-model`` (default
``~/.cache/vpatient/pbc2-model``).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import ipaddress
import math
import os
import shutil
import sys
import tempfile
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vpatient.errors import DataFormatError, Problem, RecordValidationError, VPatientError
from vpatient.schemas import DatasetConfig, PatientRecord, TreatmentExposure, TreatmentPlan, parse_record
from vpatient.staging import staging_dir

if TYPE_CHECKING:  # the policy brings in torch, which `vpatient dashboard` and `vpatient --help` must start without
    from vpatient.policy import Target

__all__ = [
    "ACTIONS",
    "HOME_ENV",
    "MAX_PLANS",
    "MAX_UPLOAD_BYTES",
    "MIN_TOKEN_CHARS",
    "MODEL_ENV",
    "TOKEN_ENV",
    "TRIAL_ACTIONS",
    "TRIAL_CHUNK_SIZE",
    "TRIAL_PATIENTS",
    "DashboardSession",
    "ForecastRequest",
    "NextTestRequest",
    "PlanSpec",
    "RolloutSettings",
    "TrialRequest",
    "UploadError",
    "WhatIfRequest",
    "access_token",
    "demo_model_dir",
    "ensure_demo_model",
    "parse_upload",
    "resolve_model_dir",
    "token_matches",
]

MODEL_ENV = "VPATIENT_MODEL_DIR"  # checkpoint the app serves (set by `vpatient dashboard`)
TOKEN_ENV = "VPATIENT_DASHBOARD_TOKEN"  # access token the app asks for (set by `vpatient dashboard --token-file`)
MIN_TOKEN_CHARS = 16  # a token short enough to guess is no protection
HOME_ENV = "VPATIENT_HOME"  # where the demo model is cached (default ~/.cache/vpatient)
MAX_UPLOAD_BYTES = 5 * 1024 * 1024  # one patient's record is a few kB; refuse anything over 5 MB
MAX_PLANS = 3
UPLOAD_PREFIX = "upload:"
_CHECKPOINT_FILES = ("weights.pt", "config.json", "model.json", "scalers.json")

#: Plan actions a clinician can choose, by the label the app shows.
ACTIONS = {
    "as recorded": "continue",
    "start or change dose": "dose",
    "stop": "stop",
}

#: Actions a trial arm can take, by label: an arm assigns its treatment at enrolment (t = 0), when nothing was given
#: before, so "as recorded" would mean no treatment and is not offered.
TRIAL_ACTIONS = {
    "treat": "dose",
    "no treatment": "stop",
}
#: Virtual patients per arm a dashboard trial may simulate: (default, most). The default took 2 s on the tests' 2-epoch
#: PBC model (two arms, 5 years, its population model fitted first; AppTest on 2 busy cores).
TRIAL_PATIENTS = (200, 2_000)
#: Virtual patients per chunk of a dashboard trial: between chunks it shows its progress and can be stopped. The library
#: gives the same trial for the same seed and chunk size (``Simulator.trial(..., chunk_size=TRIAL_CHUNK_SIZE)``).
TRIAL_CHUNK_SIZE = 50


class UploadError(VPatientError, ValueError):
    """An uploaded file that is too large, of an unknown type, or not one patient's record."""


# --------------------------------------------------------------------------- the model on disk


def cache_home() -> Path:
    """``$VPATIENT_HOME``, or ``~/.cache/vpatient``."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vpatient"


def demo_model_dir() -> Path:
    return cache_home() / "pbc2-model"


def _complete(directory: Path) -> bool:
    return directory.is_dir() and all((directory / name).is_file() for name in _CHECKPOINT_FILES)


def ensure_demo_model(
    directory: str | Path | None = None, epochs: int = 400, seed: int = 0, echo: Callable[[str], None] | None = None
) -> Path:
    """The demo PBC model's checkpoint directory, trained once (a few minutes on a CPU) if not there yet.

    Training writes to a temporary folder beside the target and renames it, so an
    interrupted run never leaves a half-written checkpoint that looks complete.
    """
    target = Path(directory) if directory is not None else demo_model_dir()
    if _complete(target):
        return target
    echo = echo or (lambda message: print(message, file=sys.stderr))
    from vpatient.datasets import load_dataset
    from vpatient.train import TrainSettings
    from vpatient.virtual_patient import VirtualPatientModel

    echo(f"no demo model at {target}: training one on the embedded PBC data (once; up to {epochs} epochs) ...")
    cohort = load_dataset("pbc2")
    model = VirtualPatientModel.fit(cohort.records, cohort.config, TrainSettings(epochs=epochs, seed=seed), progress=True)
    model.data_source = "pbc2"
    scratch = staging_dir(target)
    model.save(scratch)
    if target.exists():
        shutil.rmtree(target)
    scratch.rename(target)
    echo(f"demo model saved in {target}")
    return target


def resolve_model_dir(explicit: str | Path | None = None, train_demo: bool = True) -> Path:
    """The checkpoint to serve: ``explicit``, else ``$VPATIENT_MODEL_DIR``, else the demo PBC model."""
    chosen = explicit or os.environ.get(MODEL_ENV)
    if chosen:
        return Path(chosen).expanduser()
    if not train_demo and not _complete(demo_model_dir()):
        raise VPatientError(f"no model given and no demo model at {demo_model_dir()}: run `vpatient dashboard` once")
    return ensure_demo_model()


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class PlanSpec:
    """One plan as the editor describes it: an action on a treatment from a time.

    ``action``: ``continue`` (treatments as recorded go on), ``dose`` (start the
    treatment, or change its dose, from ``start``), ``stop`` (stop it from ``start``).
    ``start`` is in the data's time unit after the decision time.
    """

    name: str
    action: str = "continue"
    treatment: str | None = None
    start: float = 0.0
    dose: float = 1.0

    def to_plan(self, record: PatientRecord | None, at: float, config: DatasetConfig) -> TreatmentPlan:
        """The TreatmentPlan this describes for ``record`` decided at ``at``, validated against ``config``.

        ``record`` None: nothing was given before (a trial arm, assigned at enrolment, ``at`` = 0).
        """
        if self.action not in ACTIONS.values():
            raise VPatientError(
                f"plan {self.name!r}: unknown action {self.action!r}; choose one of {', '.join(ACTIONS.values())}"
            )
        recorded = record.treatments if record is not None else []
        ongoing = [e.model_copy(update={"start": max(e.start, at)}) for e in recorded if e.stop is None or e.stop > at]
        exposures: list[TreatmentExposure] = ongoing
        description = "treatments as recorded"
        if self.action != "continue":
            if not self.treatment:
                raise VPatientError(f"plan {self.name!r}: choose the treatment to {self.action}")
            switch = at + max(float(self.start), 0.0)
            exposures = []
            for e in ongoing:
                if e.treatment != self.treatment:
                    exposures.append(e)
                elif e.start < switch:
                    exposures.append(e.model_copy(update={"stop": switch if e.stop is None else min(e.stop, switch)}))
            if self.action == "dose":
                exposures.append(TreatmentExposure(treatment=self.treatment, start=switch, stop=None, dose=float(self.dose)))
                description = f"{self.treatment} at dose {self.dose:g} from t = {switch:.2f}"
            else:
                description = f"stop {self.treatment} from t = {switch:.2f}"
        plan = TreatmentPlan(name=self.name, description=description, exposures=exposures)
        return plan.check(config)


@dataclass(frozen=True, kw_only=True)
class RolloutSettings:
    """How far and with how many sample paths a forecast or what-if rolls out (keyword-only fields)."""

    horizon: float = 5.0
    n_samples: int = 200
    seed: int = 0


@dataclass(frozen=True)
class ForecastRequest(RolloutSettings):
    subject: str  # a subject id of the dataset, or an upload key
    until: float | None = None  # None: the last visit


@dataclass(frozen=True)
class WhatIfRequest(RolloutSettings):
    subject: str
    plans: tuple[PlanSpec, ...]
    at: float | None = None


def _default_target() -> Target:
    """Death within 5 time units: the next-test target a dashboard opens with."""
    from vpatient.policy import Target

    return Target.risk("death", 5.0)


@dataclass(frozen=True)
class NextTestRequest:
    """A next-test ranking to compute: the target (kind, event or variable, horizon) is part of the request, so of its cache key."""

    subject: str
    target: Target = field(default_factory=_default_target)
    at: float | None = None
    n_samples: int = 256
    seed: int = 0


@dataclass(frozen=True)
class TrialRequest:
    """An in-silico trial to simulate: the arms (the first is the reference; one arm: a virtual cohort under its plan),
    virtual patients per arm, follow-up, seed.

    ``years`` is in the data's time unit (the library's name); ``event`` None: the model's first event kind.
    """

    arms: tuple[PlanSpec, ...]
    n: int = TRIAL_PATIENTS[0]
    years: float = 5.0
    seed: int = 0
    event: str | None = None


# --------------------------------------------------------------------------- access


def is_loopback(address: str) -> bool:
    """Whether ``address`` (a host name or IP) only accepts connections from this machine."""
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # another host name: it may resolve to anything
        return False


def access_token(address: str, token_file: Path | None, insecure: bool) -> str | None:
    """The token the dashboard asks for: ``token_file``'s first line, else ``$VPATIENT_DASHBOARD_TOKEN``, else None.

    Serving beyond this machine without a token is refused unless ``insecure``: anyone who
    can reach the port would see the dataset's patients. A token is the minimum; a real
    deployment belongs behind a reverse proxy with TLS and proper authentication.
    """
    if token_file is not None:
        try:
            lines = token_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise VPatientError(f"{token_file}: cannot read the access token ({exc})") from None
        token: str | None = lines[0].strip() if lines else ""
        if not token:
            raise VPatientError(f"{token_file}: the token file is empty; write the token on its first line")
    else:
        token = os.environ.get(TOKEN_ENV) or None
    source = str(token_file) if token_file is not None else f"${TOKEN_ENV}"
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise VPatientError(f"{source}: the access token has {len(token)} characters; use at least {MIN_TOKEN_CHARS}")
    if token is None and not insecure and not is_loopback(address):
        raise VPatientError(
            f"--address {address} serves the dashboard beyond this machine: give --token-file FILE (or set {TOKEN_ENV}) "
            "so it asks for an access token, or --insecure to serve it open"
        )
    return token


def token_matches(given: str | None, expected: str) -> bool:
    """Whether ``given`` is the access token, compared in constant time (no timing hint of how much matched)."""
    return given is not None and hmac.compare_digest(given.strip().encode("utf-8"), expected.encode("utf-8"))


# --------------------------------------------------------------------------- uploads


def parse_upload(name: str, data: bytes, config: DatasetConfig) -> PatientRecord:
    """One patient's record from an uploaded file: MEDS CSV/parquet, FHIR (a Bundle's JSON, NDJSON), or a PatientRecord's JSON.

    Raises UploadError (size, type, not exactly one subject), DataFormatError (bad MEDS
    layout) or RecordValidationError (the schemas' problems: subject, field, value).
    """
    # the size is checked before any parser sees a byte (Streamlit's own limit, --server.maxUploadSize, comes first)
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"{name}: {len(data) / 1e6:.1f} MB is over the {MAX_UPLOAD_BYTES / 1e6:.0f} MB limit for one record")
    suffix = Path(name).suffix.lower()
    if suffix not in (".json", ".ndjson", ".csv", ".parquet"):
        raise UploadError(
            f"{name}: unknown file type {suffix or '(none)'}; upload MEDS .csv / .parquet, a FHIR Bundle .json or "
            ".ndjson, or a record's .json"
        )
    with tempfile.TemporaryDirectory(prefix="vpatient-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            records = _read_upload(path, config)
        except DataFormatError as exc:  # the parsers' own message, naming the user's file rather than the scratch copy
            raise UploadError(str(exc).replace(str(path), name)) from None
        except (RecordValidationError, UploadError):
            raise
        except Exception as exc:  # a parser bug: say so plainly, without its raw text (it may quote the file)
            raise UploadError(f"{name}: cannot read it as a {suffix[1:]} record ({type(exc).__name__})") from None
    if len(records) != 1:
        raise UploadError(f"{name}: holds {len(records)} records; upload one patient's record")
    return records[0]


def _read_upload(path: Path, config: DatasetConfig) -> list[PatientRecord]:
    """The records of an uploaded file saved at ``path``: a record's JSON (or a list of them), FHIR, or MEDS CSV / parquet."""
    from vpatient.data.formats import DataFormat, format_of, read_records

    if path.suffix == ".json" and format_of(path) != DataFormat.FHIR:
        from vpatient.inputs import read_json_file

        payload = read_json_file(path, "patient record", max_bytes=MAX_UPLOAD_BYTES)
        return [parse_record(item, config) for item in (payload if isinstance(payload, list) else [payload])]
    return read_records(path, config, warnings_out=[])


# --------------------------------------------------------------------------- the session


class _LRU:
    def __init__(self, size: int):
        self.size = size
        self.items: OrderedDict[Any, Any] = OrderedDict()

    def peek(self, key: Any) -> Any:
        """The value kept for ``key``, or None; computes nothing."""
        return self.items.get(key)

    def get(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = compute()
        self.items[key] = value
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


@dataclass
class DashboardSession:
    """The loaded model, its dataset, uploaded records and a cache of recent results.

    One per server (Streamlit's ``cache_resource``); computing is serialised by a lock
    because the model's posterior cache is not thread-safe.
    """

    model: Any  # VirtualPatientModel
    model_dir: Path
    cohort: Any = None  # Cohort of the model's data source, when it can be loaded
    uploads: OrderedDict[str, PatientRecord] = field(default_factory=OrderedDict)
    _cache: _LRU = field(default_factory=lambda: _LRU(64))
    _lock: threading.RLock = field(default_factory=threading.RLock)
    # What was computed rather than served from the cache, by kind ("whatif", "charts", "timeline figure", ...):
    # shows which work a page view caused (a view computes only what it shows).
    computed: Counter[str] = field(default_factory=Counter)
    _simulator: Any = None  # Simulator with its population model, made on the first trial

    @classmethod
    def load(cls, model_dir: str | Path) -> DashboardSession:
        from vpatient.datasets import load_dataset
        from vpatient.virtual_patient import VirtualPatientModel

        model = VirtualPatientModel.load(model_dir)
        cohort = None
        source = model.dataset_name
        try:
            cohort = load_dataset(source)
        except VPatientError:
            cohort = None  # a model of data not on this machine: uploads only
        return cls(model, Path(model_dir), cohort)

    @property
    def config(self) -> DatasetConfig:
        return self.model.config

    # -- patients ------------------------------------------------------------

    def subject_ids(self, query: str = "") -> list[str]:
        """Subject ids of the dataset containing ``query`` (all when empty)."""
        ids = self.cohort.subject_ids() if self.cohort is not None else []
        query = query.strip()
        return [i for i in ids if query in i] if query else ids

    def add_upload(self, name: str, data: bytes) -> str:
        """Validate an upload and keep it; returns the key requests name it by."""
        record = parse_upload(name, data, self.config)
        key = f"{UPLOAD_PREFIX}{record.subject_id}:{hashlib.sha256(data).hexdigest()[:12]}"
        with self._lock:
            self.uploads[key] = record
            while len(self.uploads) > 32:
                self.uploads.popitem(last=False)
        return key

    def record(self, subject: str) -> PatientRecord:
        if subject.startswith(UPLOAD_PREFIX):
            if subject not in self.uploads:
                raise VPatientError("the uploaded record is no longer in memory; upload it again")
            return self.uploads[subject]
        if self.cohort is None:
            raise VPatientError("this model's dataset is not available here: upload a patient's record")
        return self.cohort.subject(subject)

    def last_visit(self, subject: str) -> float:
        return float(max(self.record(subject).visit_times(), default=0.0))

    # -- computing -------------------------------------------------------------

    def _cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        kind = f"{key[1]} figure" if key[0] == "figure" else key[0]

        def counted() -> Any:
            self.computed[kind] += 1
            return compute()

        with self._lock:
            return self._cache.get(key, counted)

    def forecast(self, request: ForecastRequest):
        record = self.record(request.subject)
        return self._cached(
            ("forecast", request),
            lambda: self.model.forecast(record, request.until, request.horizon, request.n_samples, request.seed),
        )

    def plans(self, request: WhatIfRequest) -> list[TreatmentPlan]:
        """The request's plans as validated TreatmentPlans (RecordValidationError lists every problem)."""
        record = self.record(request.subject)
        at = self.last_visit(request.subject) if request.at is None else request.at
        return self._validated_plans(request.plans, record, at)

    def _validated_plans(self, specs: tuple[PlanSpec, ...], record: PatientRecord | None, at: float) -> list[TreatmentPlan]:
        """``specs`` as TreatmentPlans for ``record`` from ``at``; one RecordValidationError lists every problem (shared names too)."""
        names = [p.name for p in specs]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        problems = [
            Problem(None, "name", n, "two plans share this name; give each plan its own", owner=f"plan {n!r}") for n in duplicated
        ]
        plans = []
        for spec in specs:
            try:
                plans.append(spec.to_plan(record, at, self.config))
            except RecordValidationError as exc:
                problems += exc.problems
        if problems:
            raise RecordValidationError(problems, header="invalid treatment plan")
        return plans

    def whatif(self, request: WhatIfRequest):
        from vpatient.simulation.simulator import Simulator

        record = self.record(request.subject)
        plans = self.plans(request)
        return self._cached(
            ("whatif", request),
            lambda: Simulator(self.model).whatif(record, plans, request.horizon, request.n_samples, request.seed, request.at),
        )

    def recommend(self, request: NextTestRequest):
        from vpatient.policy import recommend

        record = self.record(request.subject)
        return self._cached(
            ("recommend", request),
            lambda: recommend(self.model, record, request.target, request.at, request.n_samples, request.seed),
        )

    # -- trials --------------------------------------------------------------

    def trial_arms(self, request: TrialRequest) -> dict[str, TreatmentPlan]:
        """The request's arms as validated plans from enrolment, by name; a clear VPatientError for a request that cannot run.

        Cheap (nothing is simulated): the app checks the inputs with it on every rerun, before offering to run.
        """
        least, most = 1, TRIAL_PATIENTS[1]
        if not least <= request.n <= most:
            raise VPatientError(f"{request.n:,} patients per arm: simulate between {least} and {most:,}")
        if not (math.isfinite(request.years) and request.years > 0):
            raise VPatientError(f"follow-up {request.years:g} {self.config.time_unit.value}: it must be more than 0")
        if not request.arms:  # one arm is a virtual cohort under its plan (no comparison)
            raise VPatientError("a trial needs at least one arm: add an arm")
        return {plan.name: plan for plan in self._validated_plans(request.arms, None, 0.0)}

    def simulator(self):
        """A :class:`~vpatient.simulation.Simulator` of the model with its population model, made once per session.

        The population model is the checkpoint's ``population.json`` when it has a current one; else it is fitted on
        the session's dataset (the model's training data, as ``vpatient simulate`` does) and kept in memory only: the
        dashboard does not write into the checkpoint it serves.
        """
        from vpatient.simulation.population import POPULATION_FILE, Population
        from vpatient.simulation.simulator import Simulator

        with self._lock:
            if self._simulator is None:
                path = self.model_dir / POPULATION_FILE
                population = Population.load(path) if path.is_file() else None
                simulator = Simulator(self.model, population, self.model_dir)
                if population is None or population.n_members != self.model.n_members:
                    if self.cohort is None:
                        raise VPatientError(
                            f"this model has no population model and its training data ({self.model.dataset_name}) is not "
                            "available here: run `vpatient simulate trial` once where it is"
                        )
                    self.computed["population"] += 1
                    simulator.fit_population(self.cohort.records, save=False)
                self._simulator = simulator
            return self._simulator

    def trial(self, request: TrialRequest, on_chunk: Callable[[int, int], None] | None = None):
        """The in-silico trial of ``request`` (a :class:`~vpatient.simulation.trial.TrialResult`), cached by the request.

        Virtual patients are simulated in chunks of :data:`TRIAL_CHUNK_SIZE`; ``on_chunk(done, total)`` after each
        (a progress bar; raising from it stops the trial, and nothing is cached).
        """
        arms = self.trial_arms(request)
        return self._cached(
            ("trial", request),
            lambda: self.simulator().trial(
                arms,
                n=request.n,
                seed=request.seed,
                years=request.years,
                event=request.event,
                chunk_size=TRIAL_CHUNK_SIZE,
                progress=False,
                on_chunk=on_chunk,
            ),
        )

    def cached_trial(self, request: TrialRequest):
        """The trial of ``request`` when it was run before (kept in the cache), else None: shown without running again."""
        with self._lock:
            return self._cache.peek(("trial", request))

    def figure(self, kind: str, request: Any) -> bytes:
        """PNG bytes of one figure (timeline, cost_curve), cached with the result it draws.

        The forecast and what-if views draw interactive charts (:meth:`charts`); their static
        figures are the reports' (:mod:`vpatient.plots`).
        """
        from vpatient import plots

        plots.select_agg_backend()  # Streamlit runs the script in worker threads: no GUI backend there

        def draw() -> bytes:
            if kind == "timeline":
                fig = plots.plot_timeline(self.record(request), self.config)
            elif kind == "cost_curve":
                fig = plots.plot_cost_curve(self.recommend(request), unit=self.config.time_unit.value).figure
            else:
                raise ValueError(f"unknown figure {kind!r}")
            return _png(fig)

        return self._cached(("figure", kind, request), draw)

    def charts(self, kind: str, request: Any, labs: tuple[str, ...]) -> tuple[list[dict], list[dict]]:
        """Interactive charts of a forecast or a what-if (``kind``), cached with the result they draw.

        Vega-Lite specifications (:mod:`vpatient.dashboard.charts`): one per lab in ``labs``,
        and the survival chart(s). Cached because the library's summaries they are drawn from
        take longer than the charts themselves.
        """
        from vpatient.dashboard import charts

        def draw() -> tuple[list[dict], list[dict]]:
            if kind == "forecast":
                forecast = self.forecast(request)
                survival = charts.forecast_survival_chart(forecast)
                return charts.forecast_lab_charts(forecast, self.record(request.subject), labs), [survival] if survival else []
            if kind == "whatif":
                result = self.whatif(request)
                return charts.whatif_lab_charts(result, self.record(request.subject), labs), charts.whatif_survival_charts(result)
            raise ValueError(f"unknown chart {kind!r}")

        return self._cached(("charts", kind, request, labs), draw)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
