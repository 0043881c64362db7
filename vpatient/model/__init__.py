"""The world model's torch part: encoders -> Gaussian experts -> product of experts -> latent ODE -> decoders.

This package imports torch and numpy only, never pydantic, pandas or scikit-learn: it sees
tensors (:mod:`vpatient.model.batch` documents their layout); records become tensors in
:mod:`vpatient.data.batching`.
"""

from vpatient.model.batch import ExpertGroup, FeatureLayout, PatientBatch
from vpatient.model.latent_ode import LatentODE, ModelSettings

__all__ = ["ExpertGroup", "FeatureLayout", "LatentODE", "ModelSettings", "PatientBatch"]
