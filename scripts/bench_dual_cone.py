"""Micro-benchmark of the dual-cone QP weights of UPGrad / DualProj against torchjd 0.18.

Times ``weights(G)`` of our strategy (host transfer, QP, weights back as a tensor) and
torchjd's ``UPGradWeighting`` / ``DualProjWeighting`` (its default quadprog projector) on
the same float32 Gramian G = J J^T, J of shape (T, P) with Gaussian entries, one thread,
the two implementations interleaved call by call; prints the median of each and the
median of the per-round ratios ours / torchjd with a 95% bootstrap interval.

    .venv/bin/python scripts/bench_dual_cone.py [--tasks 2,10,40] [--repeats 300]

``--shared`` adds a common component to the rows of J (agreeing tasks: fewer active
constraints). torchjd is a dev dependency (``pip install -e .[dev]``).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch


def build(name: str, num_tasks: int):
    from torchjd.aggregation import DualProjWeighting, UPGradWeighting

    from strategies.weighting import get

    ours = get(name)
    ours.reset(num_tasks, torch.device("cpu"))
    theirs = {"upgrad": UPGradWeighting, "dualproj": DualProjWeighting}[name]()
    return ours.weights, theirs


def gramian(num_tasks: int, dim: int, shared: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    jac = torch.randn(num_tasks, dim, generator=gen)
    if shared:
        jac = jac + shared * torch.randn(dim, generator=gen)
    return jac @ jac.T


def bootstrap_ci(ratios: np.ndarray, rng: np.random.Generator, n: int = 2000) -> tuple:
    samples = rng.choice(ratios, size=(n, ratios.size), replace=True)
    medians = np.median(samples, axis=1)
    return float(np.quantile(medians, 0.025)), float(np.quantile(medians, 0.975))


def run(name: str, num_tasks: int, args) -> dict:
    ours, theirs = build(name, num_tasks)
    grams = [gramian(num_tasks, args.dim, args.shared, seed) for seed in range(args.gramians)]
    # Same answers (sanity): the weights agree to the QP tolerance.
    for gram in grams:
        a, b = ours(gram), theirs(gram)
        assert torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-6), (a, b)
    for _ in range(args.warmup):
        for gram in grams:
            ours(gram)
            theirs(gram)
    clock = time.perf_counter
    t_ours, t_theirs = [], []
    for rep in range(args.repeats):
        gram = grams[rep % len(grams)]
        order = (0, 1) if rep % 2 == 0 else (1, 0)  # alternate who goes first
        times = [0.0, 0.0]
        for which in order:
            fn = ours if which == 0 else theirs
            start = clock()
            fn(gram)
            times[which] = clock() - start
        t_ours.append(times[0])
        t_theirs.append(times[1])
    t_ours, t_theirs = np.array(t_ours), np.array(t_theirs)
    ratios = t_ours / t_theirs
    low, high = bootstrap_ci(ratios, np.random.default_rng(0))
    return {
        "ours_ms": 1e3 * float(np.median(t_ours)),
        "theirs_ms": 1e3 * float(np.median(t_theirs)),
        "ratio": float(np.median(ratios)),
        "ci": (low, high),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="upgrad,dualproj")
    parser.add_argument("--tasks", default="2,10,40")
    parser.add_argument("--dim", type=int, default=50_000)
    parser.add_argument("--shared", type=float, default=0.0)
    parser.add_argument("--gramians", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"1 thread; J ~ N(0, 1) of shape (T, {args.dim}) float32"
          + (f" + {args.shared} x shared row" if args.shared else "")
          + f"; {args.repeats} interleaved rounds over {args.gramians} Gramians")
    print("| method | T | ours (ms) | torchjd (ms) | ratio ours/torchjd [95% CI] |")
    print("|---|---|---|---|---|")
    for name in args.methods.split(","):
        for num_tasks in (int(t) for t in args.tasks.split(",")):
            res = run(name, num_tasks, args)
            low, high = res["ci"]
            print(f"| {name} | {num_tasks} | {res['ours_ms']:.3f} | {res['theirs_ms']:.3f} | "
                  f"{res['ratio']:.2f} [{low:.2f}, {high:.2f}] |", flush=True)


if __name__ == "__main__":
    main()
