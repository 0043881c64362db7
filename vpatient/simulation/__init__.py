"""Simulation over a trained world model: what-ifs, virtual cohorts, in-silico trials."""

from vpatient.simulation.engine import Engine
from vpatient.simulation.population import Population
from vpatient.simulation.simulator import Simulator
from vpatient.simulation.trial import TrialResult
from vpatient.simulation.virtual import Schedule
from vpatient.simulation.whatif import WhatIfResult, whatif

__all__ = ["Engine", "Population", "Schedule", "Simulator", "TrialResult", "WhatIfResult", "whatif"]
