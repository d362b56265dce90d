"""``mtlbench speed``: time training steps by phase, per strategy x engine x architecture x
number of tasks x batch size x width, on synthetic data.

The sweep spec (file or preset, with ``--set`` overrides) gives the strategies
(``weighting``), the architectures (``sharing``), the model (``model.hidden``
at width ``hidden[0]``), the optimizer (``train``), the seed (``seeds[0]``) and
the input shape (that of ``datasets[0]``). The labels are synthetic: T
regression targets drawn from N(0, 1) for a fixed random batch, so any T works
and no dataset is trained on. The other axes come from the command line:

- ``--engines`` (default: every engine; loss-based strategies have no engine and
  get one cell with ``engine: null``; an engine that cannot serve a strategy on
  an architecture, see ``GradientEngine.require_support``, is skipped with a note);
- ``--tasks`` T (default: the number of tasks of ``datasets[0]``);
- ``--batch-sizes`` (default ``train.batch_size``);
- ``--widths`` (default ``model.hidden[0]``): width w scales every hidden layer by
  ``w / hidden[0]``, so the architecture's shape is kept.

Every cell is built first; then ``--warmup`` rounds and ``--repeats`` rounds run
the cells round-robin (one step of each cell per round, serially), so slow drift
of the machine hits every cell alike. A repeat sample is one step (or the mean of
``--steps`` consecutive steps). Per cell, one JSON record goes to
``DIR/speed/<cell-id>.json`` (atomically, by :class:`SpeedStore`, as a typed
:class:`bench.records.SpeedRecord`); see :func:`make_record` for the fields.

Phase split: every step is timed by phase (forward, jacobian, aggregate, backward,
optimizer, post_step; see :func:`bench.engine.train_step`). Besides the table of all
cells, the command prints the split per number of tasks: for each strategy, engine
and configuration, one row per T with each phase's median (ms and share of the step)
and the step's growth over the smallest T, so it shows where a step goes as T grows.
The same goes to ``DIR/speed/phases.md`` and, one row per cell and phase, to
``DIR/speed/phases.csv`` (both from every record in ``DIR/speed/``).

Timers (:mod:`bench.timing`): CUDA events with one synchronisation per step on
CUDA; ``perf_counter`` on CPU (or, with ``--cpu-clock thread``, the thread's CPU
time, for ``--threads 1`` on a busy machine); a synchronising ``perf_counter``
on MPS. All cells of a run live on the device at once.

Cells are built by :func:`bench.assembly.build_step`, as trials are, and timed in
this process, not through the executors (timings are compared with each other, so
they run sequentially and interleaved on one machine).

Fault injection (the regression gate's own tests and ``scripts/measure_gate.py``):
hooks installed with :mod:`bench.faults` may slow a strategy's steps down; records
of a slowed cell carry ``"injected_slowdown"``.

Modules: ``cells`` (:class:`SpeedCell`, :func:`build_cells`), ``runner``
(:class:`CellRunner`, :func:`measure`, :func:`interleave`), ``records``
(:func:`make_record`, :func:`add_ratios`, :class:`SpeedStore`, :func:`load_records`),
``tables`` (:func:`table`, :func:`split_table`, :func:`write_split`), ``cli``.
"""

from __future__ import annotations

from bench.speed.cells import (
    REFERENCE,
    SpeedCell,
    build_cells,
    default_tasks,
    scaled_hidden,
    with_all_strategies,
)
from bench.speed.cli import DEFAULT_REPEATS, DEFAULT_WARMUP, add_arguments, int_list, main, run
from bench.speed.records import SpeedStore, add_ratios, load_records, make_record, phase_shares
from bench.speed.runner import (
    BATCH_POOL,
    CellRunner,
    Measurement,
    Runner,
    interleave,
    measure,
    reduce_block,
    torch_threads,
)
from bench.speed.tables import split_rows, split_table, table, write_split

__all__ = [
    "BATCH_POOL",
    "DEFAULT_REPEATS",
    "DEFAULT_WARMUP",
    "HELP",
    "REFERENCE",
    "CellRunner",
    "Measurement",
    "Runner",
    "SpeedCell",
    "SpeedStore",
    "add_arguments",
    "add_ratios",
    "build_cells",
    "default_tasks",
    "int_list",
    "interleave",
    "load_records",
    "main",
    "make_record",
    "measure",
    "phase_shares",
    "reduce_block",
    "run",
    "scaled_hidden",
    "split_rows",
    "split_table",
    "table",
    "torch_threads",
    "with_all_strategies",
    "write_split",
]

HELP = "time training steps by phase (strategy x engine x architecture x T x batch x width)"
