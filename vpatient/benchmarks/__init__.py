"""Benchmarks: one module per ``vpatient benchmark NAME``, each result on :class:`~vpatient.benchmarks.base.BenchmarkResult`.

- :mod:`~vpatient.benchmarks.base`: the strict result base, its header and ``write(out_dir)``;
- :mod:`~vpatient.benchmarks.registry`: every result class by benchmark name;
- :mod:`~vpatient.benchmarks.options` and :mod:`~vpatient.benchmarks.cli`: the command line;
- one module per benchmark: :mod:`~vpatient.benchmarks.forecast`, ``training``,
  ``counterfactual``, ``cohort_fidelity``, ``pbc_trial``, ``simulate_speed``,
  ``next_test_selection``, ``effect_calibration``, ``trial_adjustment``.

The reusable evaluation they run on (protocol, metrics, peer methods) is :mod:`vpatient.evaluate`.
Nothing is imported here, so that importing the base does not load every benchmark.
"""
