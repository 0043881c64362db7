"""A real trial's prognostic-score (PROCOVA) adjustment, in the words reports and the dashboard show it.

Computing the adjustment (:func:`vpatient.benchmarks.trial_adjustment.run_trial_adjustment`)
trains and cross-fits fold models, minutes of work, so the trial report and the
dashboard read its saved result, ``trial-adjustment.json`` (``vpatient trial adjust
--out DIR``). The plain-word sentences are made here once, so that both say the same.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from vpatient.benchmarks.trial_adjustment import STEM, TrialAdjustmentResult
from vpatient.errors import VPatientError
from vpatient.simulation.adjustment import AdjustedEffect

__all__ = [
    "ADJUSTMENT_FILE",
    "NON_COLLAPSIBLE_NOTE",
    "SECTION_TITLE",
    "adjusted_effects",
    "adjustment_sentences",
    "effect_sentence",
    "estimate_text",
    "load_adjustment",
    "percent",
    "precision_sentence",
    "scoring_sentence",
]

#: The file ``vpatient trial adjust --out DIR`` writes in DIR.
ADJUSTMENT_FILE = f"{STEM}.json"
SECTION_TITLE = "Covariate adjustment of the real trial (prognostic score)"
NON_COLLAPSIBLE_NOTE = (
    "A hazard ratio is not collapsible: adjusting for a prognostic covariate estimates a conditional effect, further "
    "from no effect than the unadjusted one, and its standard error usually does not shrink the way a difference's "
    "does; the gain shows as a larger effect relative to its standard error instead."
)
_MAX_PROBLEMS = 3  # validation problems quoted in the refusal; a wrong file usually has many


def load_adjustment(path: str | Path, shown_as: str | None = None) -> TrialAdjustmentResult:
    """The adjustment result saved at ``path``; VPatientError naming the file when it is missing or not valid.

    ``shown_as`` names the file in those messages instead of its path (a web page shows no server path).
    """
    path = Path(path)
    name = shown_as or str(path)
    if not path.is_file():
        raise VPatientError(
            f"adjustment file {name} does not exist (vpatient trial adjust --out DIR writes DIR/{ADJUSTMENT_FILE})"
        )
    try:
        return TrialAdjustmentResult.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        problems = exc.errors()
        shown = "; ".join(f"{'.'.join(str(part) for part in p['loc']) or 'file'}: {p['msg']}" for p in problems[:_MAX_PROBLEMS])
        more = f" (and {len(problems) - _MAX_PROBLEMS} more)" if len(problems) > _MAX_PROBLEMS else ""
        raise VPatientError(
            f"{name} is not a valid trial adjustment result (the {ADJUSTMENT_FILE} that vpatient trial adjust writes): "
            f"{shown}{more}"
        ) from None


def adjusted_effects(result: TrialAdjustmentResult) -> list[AdjustedEffect]:
    """The survival effect, then the lab effect when there is one."""
    return [result.survival] + ([result.lab_effect] if result.lab_effect is not None else [])


def percent(share: float, signed: bool = False) -> str:
    """A share as a percentage with one decimal, e.g. '12.3%' (or '+12.3%' when ``signed``)."""
    return f"{share:+.1%}" if signed else f"{share:.1%}"


def _capital(text: str) -> str:
    """First letter upper case, the rest as it is (str.capitalize would lower 'log(Bilirubin)')."""
    return text[:1].upper() + text[1:]


def estimate_text(effect: AdjustedEffect, which: str) -> str:
    """The ``unadjusted`` or ``adjusted`` effect with its 95% CI, e.g. '1.06 (95% CI 0.75 to 1.5)'; a hazard ratio for Cox."""
    from vpatient.report.render import interval, num

    est = getattr(effect, which)
    if effect.analysis == "cox":
        return f"{num(est.hazard_ratio)} (95% CI {interval(est.hazard_ratio_lower, est.hazard_ratio_upper)})"
    return f"{num(est.estimate)} (95% CI {interval(est.lower, est.upper)})"


def effect_sentence(result: TrialAdjustmentResult, effect: AdjustedEffect) -> str:
    """The effect without and with the prognostic score, in one sentence."""
    without, adjusted = estimate_text(effect, "unadjusted"), estimate_text(effect, "adjusted")
    treated, reference = result.treatment_arm, result.reference_arm
    if effect.analysis == "cox":
        return (
            f"{_capital(effect.outcome)} (Cox model, {effect.n_patients} patients, {effect.n_events} events): "
            f"hazard ratio of {treated} against {reference}: {without} without adjustment, "
            f"{adjusted} adjusted for the prognostic score."
        )
    baseline = " and the baseline value" if effect.unadjusted_covariates else ""
    return (
        f"{_capital(effect.outcome)} (ANCOVA on treatment{baseline}, {effect.n_patients} patients; "
        f"{effect.n_dropped} left out for lack of a value): difference {treated} minus {reference}: "
        f"{without} without the score, {adjusted} with it."
    )


def precision_sentence(effect: AdjustedEffect) -> str:
    """The standard-error change and the equivalent sample-size saving, in plain words."""
    saving = effect.sample_size_saving
    if abs(saving) < 0.0005:  # shows as 0.0%
        need = "about as many patients"
    elif saving > 0:
        need = f"{percent(saving)} fewer patients"
    else:
        need = f"{percent(-saving)} more patients"
    return (
        f"Adjusting for the model's prognostic score changed the standard error of the {effect.effect} by "
        f"{percent(-effect.se_reduction, signed=True)}: the same precision would need {need}."
    )


def adjustment_sentences(result: TrialAdjustmentResult) -> list[str]:
    """The adjustment in plain words, as the dashboard's and the HTML card's model card say it: each effect, then the score."""
    return [f"{effect_sentence(result, e)} {precision_sentence(e)}" for e in adjusted_effects(result)] + [
        scoring_sentence(result)
    ]


def scoring_sentence(result: TrialAdjustmentResult) -> str:
    """How the score was made: from baseline data only, cross-fitted, under the reference arm."""
    return (
        f"The prognostic score is each patient's outcome as the world model predicts it under the reference arm "
        f"({result.reference_arm}), computed from baseline data only: the record as known at enrolment, without the "
        f"treatment assigned there. It is cross-fitted: the {result.n_patients} patients of {result.data} were split "
        f"into {result.n_folds} folds and each was scored by a model that did not see them (trained on the other "
        "folds, not this checkpoint), so no patient's own outcome leaks into their covariate. "
        f"{result.n_samples} posterior draws per patient; seed {result.seed}."
    )
