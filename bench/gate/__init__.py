"""``mtlbench check``: the regression gate, against a committed reference.

Two checks, one command (exit 0: pass, 1: a regression, 2: unusable input or
reference, as a one-line error):

Accuracy. Two sweeps, run as specs through the inline executor into a run store
(``--trials-dir``, else a temporary directory) with one CPU thread, which makes them
deterministic on a given CPU and torch build:

- the fixed sweep of preset ``check`` (``bench/presets/check.toml``, ``--set``
  overrides allowed): a few strategies on real-sized data for several epochs;
- the coverage sweeps: every built-in strategy x every built-in architecture, both
  lists read from the registries (``WEIGHTING``, ``SHARING``), so a new component is
  covered without editing a list (plugins' components are not: the committed reference
  holds the project's own). Each architecture runs in the first of
  :data:`COVERAGE_SETTINGS` it builds in (tiny synthetic regression on an MLP; tiny
  image pairs on a CNN, e.g. MTAN; the toy2 landscape, for ``landscape``), with every
  strategy, for :data:`COVERAGE_COMMON`'s few steps (``stl`` runs as the single-task
  baselines). The preset's settings and ``--set`` apply, then the coverage's own
  (data, model size, optimizer, epochs, batch size, seed, both axes). ``--coverage``
  restricts it to some components (``cagrad,hps``: cagrad on hard sharing) or turns it
  off (``none``).

Every number of every trial's ``metrics`` (all splits, tasks, metrics) must match the
reference within ``|current - reference| <= rtol * |reference| + atol`` (defaults
``rtol = 1e-6``, ``atol = 1e-9``; NaN matches NaN only), and every trial's status must
match.
Trials are named by their components' names, dataset position, seed and task
(not by their resolved hyperparameters), so a changed default shows up as changed
metrics (changing cagrad's ``c`` from 0.5 to 0.9 fails the coverage part). A
different CPU or torch build may legitimately change results beyond the tolerance
(summation order, vector width): the reference records its machine and the check
warns when it differs. The preset TOML, the ``--set`` list and the coverage
settings must be those of the reference (else exit 2: rerun with ``--update``); a
component registered since the reference shows as a trial missing from it (exit 1,
until ``--update``).

Speed. The preset's strategies only, not the coverage's (timing every strategy at two
task counts, 45 rounds each, would take minutes): one step cell per strategy of the
preset's sweep (its first architecture, T of its first dataset, ``train.batch_size``,
width ``model.hidden[0]``, ``train.engine``) plus ``ew``, and the same again at
``T = --large-tasks`` (default 32; 0 leaves them out), so that a cost growing faster
than T (say, every task's backward running through every other task's head: O(T^2))
moves a ratio by far more than the minimum effect. All cells are built once and timed
round-robin on one CPU thread, with the thread's CPU time (time spent preempted
by other processes does not count). A repeat sample of a cell is its fastest of
``--steps`` consecutive steps; each round gives one sample per cell, the ratio of
its sample to that of the ``ew`` cell with the same T in the same round, so the
speed of the machine cancels. A cell regressed if both

- its median ratio grew by more than ``--min-effect`` (default 15%) over the
  reference's median ratio, and
- a one-sided Mann-Whitney U test says the current ratio samples are larger than
  the reference's, p < ``--alpha`` (default 0.01);

and the same holds again in a confirming rerun of the flagged strategies (fresh
models, new samples), compared with the reference again. Only then does the
check fail.

``--update`` runs the same and writes ``DIR/baseline.json`` atomically. The reference
(``--reference DIR``, default ``results/baselines/check``; ``--baseline`` is its old
name, still accepted) is not the single-task baseline of a sweep: it is what the gate
compares with.

Fault injection (the gate's own tests and ``scripts/measure_gate.py``): hooks
installed with :mod:`bench.faults` slow a strategy's steps down or worsen its metrics.

Modules: ``plan`` (the accuracy plan, coverage), ``accuracy`` (run and compare
trials), ``ratios`` (speed cells, ratio samples, :func:`compare_speed`), ``reference``
(the committed file), ``cli`` (options and :func:`main`).
"""

from __future__ import annotations

from bench.errors import ConfigError
from bench.gate.accuracy import compare_accuracy, run_accuracy
from bench.gate.cli import EXIT_REGRESSION, HELP, add_arguments, main, standalone
from bench.gate.plan import (
    COVERAGE_COMMON,
    COVERAGE_PREFIX,
    COVERAGE_SETTINGS,
    DEFAULTS,
    THREADS,
    accuracy_plan,
    coverage_components,
    coverage_specs,
    parse_coverage,
)
from bench.gate.ratios import (
    BLOCK_REDUCE,
    CPU_CLOCK,
    SpeedVerdict,
    compare_speed,
    measure_ratios,
    speed_cells,
    speed_tasks,
)
from bench.gate.reference import (
    DEFAULT_REFERENCE,
    FORMAT,
    REFERENCE_FILE,
    VERSION,
    read_reference,
)

__all__ = [
    "BLOCK_REDUCE",
    "COVERAGE_COMMON",
    "COVERAGE_PREFIX",
    "COVERAGE_SETTINGS",
    "CPU_CLOCK",
    "DEFAULTS",
    "DEFAULT_REFERENCE",
    "EXIT_REGRESSION",
    "FORMAT",
    "HELP",
    "REFERENCE_FILE",
    "THREADS",
    "VERSION",
    "ConfigError",
    "SpeedVerdict",
    "accuracy_plan",
    "add_arguments",
    "compare_accuracy",
    "compare_speed",
    "coverage_components",
    "coverage_specs",
    "main",
    "measure_ratios",
    "parse_coverage",
    "read_reference",
    "run_accuracy",
    "speed_cells",
    "speed_tasks",
    "standalone",
]
