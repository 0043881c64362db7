"""The world model: encoders -> Gaussian experts -> product of experts -> latent ODE -> decoders.

This package imports neither pydantic nor pandas: it sees tensors only (see
:mod:`vpatient.data.batching` for their layout).
"""

from vpatient.model.vpm import ModelSettings, WorldModel

__all__ = ["ModelSettings", "WorldModel"]
