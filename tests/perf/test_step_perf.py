"""The perf suite (``make perf``): our whole training step against torchjd 0.18 and the floor
proxy, on the reference problem of issue 13, at T in {2, 10, 40}.

One test per (T, strategy): every gradient-based strategy and a few loss-based ones
(``harness.LOSS_BASED``). Each test times its group (see ``harness``: ours, torchjd's
``mtl_backward`` step, torchjd's ``autogram`` step, the floor proxy, ``ew``) interleaved
round by round, then hands our step to pytest-benchmark (``benchmark.pedantic``) so
``results/perf/benchmark.json`` holds its timing, with the group's medians and paired
ratios in ``extra_info``. At the end the ratio table (median of per-round ratios and its
95% interval; ours / torchjd's faster step, ours / floor, loss-based / ew) is printed
and written to ``results/perf/ratios.md`` and ``ratios.json``.

This is a benchmark, not a test of speed: nothing asserts a timing or a ratio (the
table shows each ratio against issue 13's target). It asserts only that every step
produced finite shared gradients.

Environment: ``MTLBENCH_PERF_TASKS`` (default ``2,10,40``), ``MTLBENCH_PERF_ROUNDS``
(timed rounds per group, default 20; loss-based groups take ``harness.LOSS_ROUNDS``
times as many: their steps are a few ms and their target is 5%, so 20 rounds
leave an interval wider than the effect), ``MTLBENCH_PERF_WARMUP`` (default 3),
``MTLBENCH_PERF_ENGINES`` (our engines, comma-separated; default ``default,auto,autogram``:
the engine trials use, ``train.engine``, the engine that picks autogram where it is
faster, and the hook-based Gramian engine; an engine that cannot serve a strategy, or
does not exist, is skipped),
``MTLBENCH_PERF_STRATEGIES`` (a subset), ``MTLBENCH_PERF_THREADS`` (default 1),
``MTLBENCH_PERF_OUT`` (default ``results/perf``).
"""

from __future__ import annotations

import os

import pytest
import torch

from . import harness as H

TASKS = [int(t) for t in os.environ.get("MTLBENCH_PERF_TASKS", "2,10,40").split(",") if t]
ROUNDS = int(os.environ.get("MTLBENCH_PERF_ROUNDS", "20"))
WARMUP = int(os.environ.get("MTLBENCH_PERF_WARMUP", "3"))
ENGINES = H.engine_list(os.environ.get("MTLBENCH_PERF_ENGINES", H.DEFAULT_ENGINES))
THREADS = int(os.environ.get("MTLBENCH_PERF_THREADS", "1"))
BENCH_ROUNDS = 3  # pytest-benchmark's own rounds of our step (the table uses the above)


def _strategies() -> list[str]:
    names = [*H.gradient_strategies(), *H.loss_strategies()]
    wanted = os.environ.get("MTLBENCH_PERF_STRATEGIES")
    if wanted:
        keep = {w.strip() for w in wanted.split(",")}
        names = [n for n in names if n in keep]
    return names


CASES = [(T, s) for T in TASKS for s in _strategies()]


@pytest.fixture(scope="module", autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("num_tasks", "strategy"), CASES,
                         ids=[f"T{T}-{s}" for T, s in CASES])
def test_step(benchmark, num_tasks, strategy):
    rounds = H.rounds_for(strategy, ROUNDS)
    res, runners = H.run_group(strategy, num_tasks, engines=ENGINES, rounds=rounds,
                               warmup=WARMUP, device=H.perf_device())
    H.RESULTS.append(res)
    for runner in runners:
        for p in runner.ctx.shared:
            assert p.grad is not None and torch.isfinite(p.grad).all(), runner.name
    benchmark.group = f"T={num_tasks}"
    benchmark.extra_info.update(res.to_dict())
    benchmark.extra_info.update(rounds=rounds, warmup=WARMUP, clock=H.clock_note(THREADS))
    ours = runners[0]
    benchmark.pedantic(H.step_fn(ours), rounds=BENCH_ROUNDS, warmup_rounds=1, iterations=1)
