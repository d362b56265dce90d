"""Measure planning, loading and reporting on a large synthetic run directory.

Builds a sweep of about ``--trials`` multi-task trials (two synthetic datasets, four
architectures, every strategy that plans on them, as many seeds as needed) plus their
single-task baselines, then writes one record per trial, cloned from a few real tiny
trials with perturbed metrics. Each step is then timed in a fresh process (so that no
cache of one step helps another), ``--repeat`` times, and the medians printed:

- ``plan``: ``load_spec`` + ``grid.expand`` (what ``mtlbench run`` does before running);
- ``load``: ``bench.store.load`` of the run directory;
- ``report``: ``bench.report.write_report`` (loads the records itself).

    .venv/bin/python scripts/bench_scale.py --trials 10000 --dir /tmp/scale10k

The directory is reused when it already holds a manifest for the same sweep (its records
are not rebuilt); ``--rebuild`` forces a new one.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATASETS = [
    '{ name = "mmoe_synthetic", num_train = 64, num_val = 32, num_test = 32, input_dim = 8 }',
    '{ name = "conflict", num_tasks = 3, num_train = 64, num_val = 32, num_test = 32, '
    "input_dim = 8 }",
]
SHARING = ["hps", "mmoe", "cgc", "cross_stitch"]
# Strategies left out: those needing a parameter per task count or a special engine.
SKIP = {"ls", "stch"}


def sweep_text(trials: int) -> str:
    from strategies.weighting import WEIGHTING

    weighting = [w for w in WEIGHTING.names() if w not in SKIP]
    seeds = max(1, math.ceil(trials / (len(DATASETS) * len(SHARING) * len(weighting))))
    return (
        f'name = "scale"\nseeds = {list(range(seeds))}\n'
        f"datasets = [{', '.join(DATASETS)}]\n"
        f"sharing = {json.dumps(SHARING)}\nweighting = {json.dumps(weighting)}\n"
        "[model]\nhidden = [8]\n[train]\nepochs = 2\nbatch_size = 32\n"
    )


def _templates(trials: list) -> dict[tuple[str, str, tuple[str, ...] | None], Any]:
    """One real record per (dataset, kind): a multi-task ``hps``/``ew`` trial and each
    single-task baseline, to clone."""
    from bench.trial import execute

    out: dict[tuple[str, str, tuple[str, ...] | None], Any] = {}
    for spec in trials:
        key = (spec.dataset.name, "baseline" if spec.is_baseline else "mtl", spec.tasks)
        if key[1] == "mtl":
            key = (spec.dataset.name, "mtl", None)
            if spec.sharing.name != "hps" or spec.weighting.name != "ew":
                continue
        if key not in out:
            rec = execute(spec)
            assert rec.ok, rec.error
            out[key] = rec
    return out


def build(run_dir: Path, trials: int) -> None:
    from bench.config import load_spec
    from bench.grid import expand
    from bench.records import dumps
    from bench.store import RunStore

    text = sweep_text(trials)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "sweep.toml").write_text(text)
    spec = load_spec(run_dir / "sweep.toml")
    specs = expand(spec)
    templates = _templates(specs)
    rng = np.random.default_rng(0)
    trials_dir = run_dir / "trials"
    trials_dir.mkdir(exist_ok=True)
    for t in specs:
        key = ((t.dataset.name, "baseline", t.tasks) if t.is_baseline
               else (t.dataset.name, "mtl", None))
        template = templates[key]
        metrics = {split: {task: {name: None if value is None
                                  else float(value) * float(rng.uniform(0.9, 1.1))
                                  for name, value in values.items()}
                           for task, values in per_task.items()}
                   for split, per_task in template.metrics.items()}
        timing = template.timing.model_copy(update={
            "step_s": template.timing.step_s * float(rng.uniform(0.8, 1.2))})
        rec = template.model_copy(update={
            "id": t.id, "spec": t, "baselines": dict(t.baselines), "labels": t.labels,
            "metrics": metrics, "timing": timing})
        # Plain writes: the atomic fsync'd path would only slow the set-up down.
        (trials_dir / f"{t.id}.json").write_text(dumps(rec))
    RunStore(run_dir).write_manifest(spec.to_dict(), [t.id for t in specs])


# Each step after its imports (import time is the same before and after a change), as
# wall time and CPU time of the process (steadier on a shared machine).
STEPS = {
    "plan": "from bench.config import load_spec; from bench.grid import expand; "
            "import bench.data, strategies.weighting\n"
            "call = lambda: expand(load_spec({dir!r} + '/sweep.toml'))",
    "load": "from bench.store import load; import bench.data, strategies.weighting\n"
            "call = lambda: load({dir!r})",
    "report": "from bench.report import write_report; import bench.data, strategies.weighting"
              "\ncall = lambda: write_report({dir!r})",
}
TIMER = ("\nimport time\nw, c = time.perf_counter(), time.process_time()\ncall()\n"
         "print(time.perf_counter() - w, time.process_time() - c)")


def measure(run_dir: Path, step: str) -> tuple[float, float]:
    """Wall and CPU seconds of ``step`` in a fresh process."""
    proc = subprocess.run([sys.executable, "-c", STEPS[step].format(dir=str(run_dir)) + TIMER],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    wall, cpu = proc.stdout.split()[-2:]
    return float(wall), float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/mtlbench-scale"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", default="plan,load,report")
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    manifest = args.dir / "manifest.json"
    if args.rebuild or not manifest.is_file() or (
            (args.dir / "sweep.toml").read_text() != sweep_text(args.trials)):
        start = time.perf_counter()
        build(args.dir, args.trials)
        print(f"built {args.dir} in {time.perf_counter() - start:.0f} s")
    records = len(list((args.dir / "trials").glob("*.json")))
    print(f"{records} records in {args.dir}")
    for step in args.steps.split(","):
        runs = [measure(args.dir, step) for _ in range(args.repeat)]
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"{step:>7}: median {wall:6.2f} s wall, {cpu:6.2f} s CPU "
              f"(wall runs: {', '.join(f'{w:.2f}' for w, _ in runs)}; "
              f"{1000 * wall / records:.3f} ms per record)")


if __name__ == "__main__":
    main()
