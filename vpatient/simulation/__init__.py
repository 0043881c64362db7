"""Simulation over a trained world model: what-ifs, virtual cohorts, in-silico trials."""

from __future__ import annotations

import importlib

__all__ = ["Engine", "Population", "Schedule", "Simulator", "TrialResult", "WhatIfResult"]

# Loaded on first use: the command line imports `vpatient.simulation.cli` without torch.
_LAZY = {
    "Engine": "engine",
    "Population": "population",
    "Schedule": "sampling",
    "Simulator": "simulator",
    "TrialResult": "trial",
    "WhatIfResult": "whatif",
}
# (The function ``whatif`` is not re-exported: its module has the same name. Use
# ``Simulator.whatif`` or ``vpatient.simulation.whatif.whatif``.)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(f"vpatient.simulation.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'vpatient.simulation' has no attribute {name!r}")
