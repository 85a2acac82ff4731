"""farmhand.sim: the production scheduling core inside a SimPy simulation.

- :mod:`farmhand.sim.runtime`: the SimPy runtime that implements the core's ``Context`` (simulated network
  with latency, jitter, loss and per-link FIFO; SimPy timers; seeded randomness; no threads).
- :mod:`farmhand.sim.virtual_render`: virtual workers that speak the worker messages and "run" tasks by waiting.
- :mod:`farmhand.sim.workload`: workloads: the synthetic generator, the JSON/YAML workload file, SWF v2.2 traces.
- :mod:`farmhand.sim.run`: one run: the core, the renders and the workload on the runtime, with optional faults;
  the run records and the summary (computed by :func:`farmhand.core.records.summarize`).
- :mod:`farmhand.sim.plots`: throughput, utilisation, per-user share, wait CDF and Gantt figures (PNG).
- :mod:`farmhand.sim.sweep` and :mod:`farmhand.sim.sweep_plots`: policies x seeds x generator options in parallel
  processes or on dask, with 95 % confidence intervals (``farmhand sweep``, :mod:`farmhand.cli_sweep`).

``farmhand sim`` (:mod:`farmhand.cli_sim`) is the command line over all of it. The same seed and inputs give a
byte-identical ``tasks.csv``.
"""
