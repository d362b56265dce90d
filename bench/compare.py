"""``mtlbench compare RUN_A RUN_B``: what changed between two runs, by how much, and whether
the change exceeds the noise between seeds.

Rows are matched by (dataset, sharing, weighting) label; single-task baselines are rows of
their own (``stl (baseline: <task>)``). For every matched row the per-seed values of
Δm task, Δm metric, each task's test metrics (not the losses) and the time per step are
compared: difference of the means (B - A), its Welch interval at level 1 - alpha
(``diff ± t_df se``, Welch-Satterthwaite degrees of freedom: it excludes 0 exactly when
the test below says yes) and Welch's t-test (``--alpha``, default 0.05). A change
*exceeds the seed noise* when Welch's p < alpha; when neither run varies across seeds
(deterministic results) any difference counts. Fewer than 2 seeds in a run: no test
(``n/a``).

Timings (``step (ms)``, the steady-state time per step of each trial record) get no
verdict (``not tested``) and no interval: how much a timing varies between seeds is not
its noise (machine load, other processes, another machine between the runs), so a
difference "beyond seed noise" would mean nothing. ``mtlbench speed`` and ``mtlbench
check`` compare timings with repeated, interleaved measurements. Rows present in one run
only are listed, and so are the differences between the two sweeps' settings (from the
manifests).

The markdown goes to stdout and to ``RUN_B/compare-<name of RUN_A>.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from bench import analysis, store
from bench.errors import ConfigError
from bench.grid import schema1_labels
from bench.tasks import HIGHER_IS_BETTER

__all__ = ["HELP", "Comparison", "add_arguments", "compare_runs", "main", "render"]

HELP = "compare two run directories: changes per row and whether they exceed seed noise"

KEY = ["dataset", "sharing", "weighting"]
_STEP = "step (ms)"
TIMINGS = frozenset({_STEP})  # compared without a noise verdict (see the module docstring)
UNTESTED = "not tested"
_DIRECTION = {"Δm task (%)": True, "Δm metric (%)": False, _STEP: False}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", help="reference run directory")
    parser.add_argument("run_b", help="run directory compared against RUN_A")
    parser.add_argument("--out", help="markdown file (default: RUN_B/compare-<RUN_A name>.md)")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="significance level of Welch's t-test (default 0.05)")
    parser.add_argument("--split", choices=["test", "val"], default="test",
                        help="metrics of this split (default test)")
    parser.add_argument("--all", action="store_true",
                        help="also list quantities whose mean did not change")
    parser.add_argument("--fail-on-change", action="store_true",
                        help="exit 1 when some change exceeds the seed noise")


@dataclass
class Comparison:
    name_a: str
    name_b: str
    rows: pd.DataFrame  # one row per matched (row key, quantity)
    only_a: list[tuple[str, str, str]] = field(default_factory=list)
    only_b: list[tuple[str, str, str]] = field(default_factory=list)
    sweep_diff: list[tuple[str, Any, Any]] = field(default_factory=list)
    status: list[tuple[tuple[str, str, str], str, str]] = field(default_factory=list)
    alpha: float = 0.05

    @property
    def significant(self) -> pd.DataFrame:
        return self.rows[self.rows["exceeds_noise"] == "yes"]


def _values(run_dir: Path, split: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Per-seed values (columns: KEY, quantity, seed, value) and per-row trial statuses."""
    tidy = store.load(run_dir, schema1_labels=schema1_labels)
    if tidy.empty:
        raise ConfigError(f"{run_dir}: no trial records to compare")
    summary = analysis.trial_summary(tidy, split)
    tidy = tidy.copy()
    is_base = tidy["baseline_task"].notna()
    tidy.loc[is_base, "sharing"] = [f"{s} (baseline: {t})" for s, t in zip(
        tidy.loc[is_base, "sharing"], tidy.loc[is_base, "baseline_task"], strict=True)]
    parts = []
    ok = tidy[(tidy["status"] == "ok") & (tidy["split"] == split)]
    ok = ok[ok["metric"].isin(HIGHER_IS_BETTER.keys())]
    if not ok.empty:
        parts.append(ok.assign(quantity=ok["task"] + " " + ok["metric"])[
            [*KEY, "quantity", "seed", "value"]])
    trials = tidy[tidy["status"] == "ok"].drop_duplicates("trial_id")
    if not trials.empty:
        parts.append(trials.assign(quantity=_STEP, value=trials["step_s"] * 1e3)[
            [*KEY, "quantity", "seed", "value"]])
    for col, name in (("delta_m_task", "Δm task (%)"), ("delta_m_metric", "Δm metric (%)")):
        if not summary.empty:
            parts.append(summary.assign(quantity=name, value=summary[col])[
                [*KEY, "quantity", "seed", "value"]])
    values = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=[*KEY, "quantity", "seed", "value"])
    values = values.dropna(subset=["value"])
    statuses = tidy.drop_duplicates("trial_id").groupby(KEY)["status"].agg(
        lambda s: ", ".join(f"{n} {k}" for k, n in sorted(s.value_counts().items())))
    manifest = store.RunStore(run_dir).manifest() or {}
    return values, statuses, manifest.get("sweep") or {}


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def _direction(quantity: str) -> bool | None:
    if quantity in _DIRECTION:
        return _DIRECTION[quantity]
    return HIGHER_IS_BETTER.get(quantity.rsplit(" ", 1)[-1])


def welch_interval(a: np.ndarray, b: np.ndarray, level: float) -> tuple[float, float]:
    """Interval of ``mean(b) - mean(a)``: ``diff ± t_df se`` with ``se² = s_a²/n_a +
    s_b²/n_b`` and Welch-Satterthwaite ``df``; degenerate when neither sample varies, NaN
    with fewer than 2 values in either."""
    if a.size < 2 or b.size < 2:
        return (math.nan, math.nan)
    diff = float(b.mean() - a.mean())
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    if va + vb == 0:
        return (diff, diff)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = float(stats.t.ppf(0.5 + level / 2.0, df) * math.sqrt(va + vb))
    return (diff - half, diff + half)


def _test(a: np.ndarray, b: np.ndarray, alpha: float) -> tuple[float, str]:
    """Welch's p-value and the verdict: yes / no / n/a."""
    diff = b.mean() - a.mean()
    if a.size < 2 or b.size < 2:
        return (math.nan, "n/a")
    if a.var(ddof=1) == 0 and b.var(ddof=1) == 0:
        scale = max(abs(a.mean()), abs(b.mean()), 1e-300)
        changed = abs(diff) > 1e-12 * scale
        return (0.0 if changed else 1.0, "yes" if changed else "no")
    p = float(stats.ttest_ind(b, a, equal_var=False).pvalue)
    return (p, "yes" if p < alpha else "no")


def compare_runs(run_a: str | Path, run_b: str | Path, *, alpha: float = 0.05,
                 split: str = "test") -> Comparison:
    """Compare two run directories (see the module docstring)."""
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"--alpha: must be between 0 and 1, got {alpha}")
    run_a, run_b = Path(run_a), Path(run_b)
    va, sa, sweep_a = _values(run_a, split)
    vb, sb, sweep_b = _values(run_b, split)
    keys_a = set(map(tuple, sa.index.to_frame(index=False).to_numpy().tolist()))
    keys_b = set(map(tuple, sb.index.to_frame(index=False).to_numpy().tolist()))
    rows = []
    ga = {k: g for k, g in va.groupby([*KEY, "quantity"], sort=True)}
    gb = {k: g for k, g in vb.groupby([*KEY, "quantity"], sort=True)}
    for key in sorted(set(ga) & set(gb)):
        a = ga[key]["value"].to_numpy(dtype=float)
        b = gb[key]["value"].to_numpy(dtype=float)
        if key[3] in TIMINGS:
            p, verdict, (lo, hi) = math.nan, UNTESTED, (math.nan, math.nan)
        else:
            p, verdict = _test(a, b, alpha)
            lo, hi = welch_interval(a, b, 1.0 - alpha)
        diff = float(b.mean() - a.mean())
        direction = _direction(key[3])
        if direction is None or diff == 0:
            better = ""
        else:
            better = "better" if (diff > 0) == direction else "worse"
        rows.append({
            "dataset": key[0], "sharing": key[1], "weighting": key[2], "quantity": key[3],
            "mean_a": float(a.mean()), "std_a": float(a.std(ddof=1)) if a.size > 1 else math.nan,
            "n_a": int(a.size),
            "mean_b": float(b.mean()), "std_b": float(b.std(ddof=1)) if b.size > 1 else math.nan,
            "n_b": int(b.size), "diff": diff,
            "rel_diff_pct": diff / abs(a.mean()) * 100 if a.mean() != 0 else math.nan,
            "diff_low": lo, "diff_high": hi, "welch_p": p, "exceeds_noise": verdict,
            "direction": better,
        })
    table = pd.DataFrame(rows, columns=[
        *KEY, "quantity", "mean_a", "std_a", "n_a", "mean_b", "std_b", "n_b", "diff",
        "rel_diff_pct", "diff_low", "diff_high", "welch_p", "exceeds_noise", "direction"])
    fa, fb = _flatten(sweep_a), _flatten(sweep_b)
    sweep_diff = [(k, fa.get(k, "—"), fb.get(k, "—")) for k in sorted(set(fa) | set(fb))
                  if fa.get(k, "—") != fb.get(k, "—") and k != "name"]
    status = [(k, sa[k], sb[k]) for k in sorted(keys_a & keys_b) if sa[k] != sb[k]]
    return Comparison(
        name_a=str(run_a), name_b=str(run_b), rows=table,
        only_a=sorted(keys_a - keys_b), only_b=sorted(keys_b - keys_a),
        sweep_diff=sweep_diff, status=status, alpha=alpha,
    )


def _fmt(v: float, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.{digits}g}"


def render(cmp: Comparison, *, show_all: bool = False) -> str:
    """The comparison as markdown."""
    from tabulate import tabulate

    def cell(x: Any) -> str:
        return str(x).replace("|", r"\|").replace("\n", " ")

    level = f"{1 - cmp.alpha:.0%}"
    lines = [f"# mtlbench compare: {cmp.name_a} → {cmp.name_b}", "",
             "B − A per matched (dataset, sharing, weighting) row; mean ± std over seeds. "
             f"'beyond noise': Welch's t-test p < {cmp.alpha} (any difference when neither run "
             f"varies across seeds; n/a with fewer than 2 seeds). Interval: {level} Welch "
             "interval of the difference of means (excludes 0 exactly when the test says "
             f"yes). Step times (steady state, warm-up excluded) are '{UNTESTED}': seed "
             "variation is not a timing's noise; compare timings with mtlbench speed.", ""]
    lines += ["## Sweep differences", ""]
    if cmp.sweep_diff:
        lines += [f"- `{k}`: {a!r} → {b!r}" for k, a, b in cmp.sweep_diff] + [""]
    else:
        lines += ["(same sweep settings)", ""]
    rows = cmp.rows
    changed = rows if show_all else rows[rows["diff"].abs() > 0]
    sig = rows[rows["exceeds_noise"] == "yes"]
    untested = rows[rows["exceeds_noise"] == UNTESTED]
    matched = rows[[*KEY]].drop_duplicates()
    lines += ["## Changes", "",
              f"{len(matched)} matched rows, {len(rows)} quantities compared, "
              f"{int((rows['diff'].abs() > 0).sum())} changed, {len(sig)} beyond seed noise "
              f"({len(untested)} timings not tested).",
              ""]
    if not changed.empty:
        order = changed.assign(_s=(changed["exceeds_noise"] != "yes"),
                               _r=-changed["rel_diff_pct"].abs().fillna(0))
        order = order.sort_values(["_s", *KEY, "_r"], kind="stable")
        table = [[
            cell(r.dataset), cell(r.sharing), cell(r.weighting), cell(r.quantity),
            f"{_fmt(r.mean_a)} ± {_fmt(r.std_a, 2)} ({r.n_a})",
            f"{_fmt(r.mean_b)} ± {_fmt(r.std_b, 2)} ({r.n_b})",
            _fmt(r.diff), _fmt(r.rel_diff_pct, 3),
            f"[{_fmt(r.diff_low)}, {_fmt(r.diff_high)}]" if math.isfinite(r.diff_low) else "—",
            _fmt(r.welch_p, 3), r.exceeds_noise, r.direction,
        ] for r in order.itertuples()]
        lines += [tabulate(table, headers=[
            "dataset", "sharing", "weighting", "quantity", "A", "B", "B − A", "B − A (%)",
            f"{level} interval", "Welch p", "beyond noise", ""], tablefmt="pipe",
            disable_numparse=True), ""]
    if cmp.status:
        lines += ["## Trial status changes", ""]
        lines += [f"- {cell(' / '.join(k))}: {a} → {b}" for k, a, b in cmp.status] + [""]
    for title, keys in (("Only in A", cmp.only_a), ("Only in B", cmp.only_b)):
        if keys:
            lines += [f"## {title}", ""]
            lines += [f"- {cell(' / '.join(map(str, k)))}" for k in keys] + [""]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    for path in (args.run_a, args.run_b):
        if not Path(path).is_dir():
            raise ConfigError(f"{path}: no such run directory")
    cmp = compare_runs(args.run_a, args.run_b, alpha=args.alpha, split=args.split)
    text = render(cmp, show_all=args.all)
    out = Path(args.out) if args.out else (
        Path(args.run_b) / f"compare-{Path(args.run_a).resolve().name}.md")
    store.atomic_write_text(out, text + "\n")
    print(text)
    print(f"wrote {out}")
    return 1 if args.fail_on_change and not cmp.significant.empty else 0
