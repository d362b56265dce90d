"""TensorBoard: event files written while trials train, and ``mtlbench tensorboard RUN_DIR``.

Layout: ``<run>/tensorboard/`` holds one folder per trial, named
``dataset/sharing/weighting/seed N`` (labels as in the report; baselines add their task),
so TensorBoard's run list reads as the sweep's axes, and at its top the HParams
experiment (every hyperparameter and the metric tags), written by ``mtlbench run``.

What each trial writes (``TrialLogger``):

- every ``tensorboard.every`` steps: ``train/loss/<task>``, ``train/weight/<task>`` (the
  weights the strategy applied), ``train/shared_grad_norm`` and ``train/step_ms`` (mean
  host time per step since the last point, probes included). The values are kept on the
  device and written at the end of each epoch, where the trial syncs anyway: logging adds
  no host sync per step;
- every epoch (at its last step): ``epoch/train_loss/<task>``, ``epoch/weight/<task>``,
  ``val/<task>/<metric>`` (loss included), ``val/mean_loss``, ``lr``, and the probes:
  ``probes/conflict/{cosine,magnitude_similarity}/<a|b>`` at each probed step,
  ``probes/conflict/fraction/<a|b>`` and ``probes/affinity/<a>-><b>`` so far;
- HParams: the session (its hyperparameters) when it starts; at its end
  ``hparams/test/<task>/<metric>``, ``hparams/step_ms``, ``hparams/best_epoch`` and the
  session's status.

Δm needs the single-task baselines, which finish in any order, so ``hparams/delta_m_task``
and ``hparams/delta_m_metric`` are written by ``mtlbench report`` (one small event file
per multi-task trial, replaced at each report).

``tensorboard`` is imported only here, and only when events are written or served.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import data
from bench.errors import ConfigError
from bench.records import TrialRecord
from bench.spec import TensorBoardSettings, TrialSpec
from bench.store import varying_train_keys, weighting_label

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from bench.probes import Probe

__all__ = ["FOLDER", "TrialLogger", "attach", "hparams_of", "run_names",
           "write_delta_m", "write_experiment"]

FOLDER = "tensorboard"  # under the run directory
EXPERIMENT_SUFFIX = ".mtlbench-experiment"
REPORT_SUFFIX = ".mtlbench-report"
DEFAULT_PORT = 6006  # TensorBoard's own default, used when it is free
RELOAD_S = 5  # how often a served run directory is re-read (runs in progress)
HELP = "serve a run directory's TensorBoard events on 127.0.0.1"


# --------------------------------------------------------------------------- names, hparams


def _safe(text: str) -> str:
    """A label as one path component ('/' would nest folders)."""
    return text.replace(os.sep, "_").replace("/", "_").strip() or "_"


def run_names(trials: Sequence[TrialSpec]) -> dict[str, str]:
    """Trial id -> its folder under ``tensorboard/``: ``dataset/sharing/weighting/seed N``,
    with the labels of the report (non-default hyperparameters; the weighting label names
    the sampling policy and varying training settings). Two trials that would share a name
    get their id appended."""
    varying = varying_train_keys(trials)
    names: dict[str, str] = {}
    for t in trials:
        weighting = weighting_label(t, varying)
        if t.tasks:  # single-task baseline: one per task
            weighting += f" task={','.join(t.tasks)}"
        labels = t.labels
        parts = [labels.dataset if labels else t.dataset.name,
                 labels.sharing if labels else t.sharing.name,
                 weighting, f"seed {t.seed}"]
        names[t.id] = "/".join(_safe(p) for p in parts)
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {k: (f"{v} [{k}]" if counts[v] > 1 else v) for k, v in names.items()}


def attach(trials: Sequence[TrialSpec], settings: TensorBoardSettings,
           run_dir: str | Path) -> list[TrialSpec]:
    """``trials`` carrying their TensorBoard folder and interval (ids unchanged); as they
    are when logging is off."""
    import dataclasses

    if not settings.enabled:
        return list(trials)
    root = Path(run_dir).resolve() / FOLDER
    names = run_names(trials)
    return [dataclasses.replace(t, tensorboard={"dir": str(root / names[t.id]),
                                                "every": settings.every})
            for t in trials]


def _scalar(value: Any) -> bool | float | str:
    """An HParams value: bool, number or string (lists and None as JSON)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def hparams_of(spec: TrialSpec) -> dict[str, bool | float | str]:
    """A trial's hyperparameters, flat: the axes and their parameters, the training
    settings, the seed, and the task of a single-task baseline ("all" otherwise)."""
    out: dict[str, bool | float | str] = {}
    for axis, comp in (("dataset", spec.dataset), ("sharing", spec.sharing),
                       ("weighting", spec.weighting), ("sampling", spec.sampling)):
        out[axis] = comp.name if comp is not None else "none"
        for key, value in sorted((comp.params if comp is not None else {}).items()):
            out[f"{axis}.{key}"] = _scalar(value)
    out["seed"] = float(spec.seed)
    out["task"] = ",".join(spec.tasks) if spec.tasks else "all"
    for key, value in sorted(spec.train.to_dict().items()):
        out[f"train.{key}"] = _scalar(value)
    return out


# --------------------------------------------------------------------------- event files


class _EventFile:
    """One event file, written synchronously (no writer thread competing with training)."""

    def __init__(self, folder: Path, suffix: str = "") -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        folder.mkdir(parents=True, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{time.monotonic_ns()}{suffix}")
        self.path = folder / name
        self._file = open(self.path, "wb")  # noqa: SIM115 - open for the logger's lifetime
        self._writer = RecordWriter(self._file)
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: Any) -> None:
        self._writer.write(event.SerializeToString())

    def summary(self, summary: Any, step: int = 0, wall_time: float | None = None) -> None:
        self._write(self._event_pb2.Event(wall_time=wall_time or time.time(), step=step,
                                          summary=summary))

    def scalars(self, values: dict[str, float], step: int,
                wall_time: float | None = None) -> None:
        """All of ``values`` as one event (one record) at ``step``."""
        if not values:
            return
        summary = self._summary_pb2.Summary(value=[
            self._summary_pb2.Summary.Value(tag=tag, simple_value=float(v))
            for tag, v in values.items()])
        self.summary(summary, step, wall_time)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def _session_end(status: str) -> Any:
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    code = api_pb2.STATUS_SUCCESS if status == "ok" else api_pb2.STATUS_FAILURE
    data = plugin_data_pb2.HParamsPluginData(session_end_info=plugin_data_pb2.SessionEndInfo(
        status=code, end_time_secs=time.time()))
    summary = summary_pb2.Summary()
    summary.value.add(tag=metadata.SESSION_END_INFO_TAG, tensor=metadata.NULL_TENSOR,
                      metadata=metadata.create_summary_metadata(data))
    return summary


class TrialLogger:
    """TensorBoard events of one trial (see the module docstring for the tags).

    Step values stay on the device until :meth:`end_epoch`, which writes them with one
    transfer right after the trial's own per-epoch sync."""

    def __init__(self, settings: dict[str, Any], spec: TrialSpec) -> None:
        from tensorboard.plugins.hparams import summary_v2 as hp

        self.every = int(settings.get("every", 10))
        self.tasks: list[str] = list(spec.tasks or ())
        self._file = _EventFile(Path(settings["dir"]))
        self._file.summary(hp.hparams_pb(hparams_of(spec), trial_id=spec.id))
        self._file.flush()
        self._pending: list[tuple[int, float, torch.Tensor, torch.Tensor | None,
                                  torch.Tensor]] = []
        self._clock = (time.perf_counter(), 0)
        self._probed: dict[str, int] = {}  # probe name -> observations already written
        self._status: str | None = None

    def begin(self, tasks: Sequence[str]) -> None:
        """The trial's task names, in the order of its loss vectors."""
        self.tasks = list(tasks)

    def start_epoch(self, global_step: int) -> None:
        """Restart the step clock (evaluation time is no step time)."""
        self._clock = (time.perf_counter(), global_step)

    def due(self, global_step: int) -> bool:
        return global_step % self.every == 0

    def step(self, global_step: int, losses: torch.Tensor, weights: torch.Tensor | None,
             shared: Sequence[torch.Tensor]) -> None:
        """Keep this step's values (device tensors, no sync)."""
        import torch

        grads = [p.grad for p in shared if p.grad is not None]
        norm = (torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
                if grads else losses.new_zeros(()))
        now = time.perf_counter()
        start, first = self._clock
        step_ms = (now - start) * 1000 / max(global_step + 1 - first, 1)
        self._clock = (now, global_step + 1)
        w = weights.detach().clone() if weights is not None else None
        self._pending.append((global_step, step_ms, losses.detach().clone(), w, norm.detach()))

    def _flush_steps(self) -> None:
        import torch

        if not self._pending:
            return
        parts = [t.reshape(-1).float() for _, _, loss, w, norm in self._pending
                 for t in (loss, *([w] if w is not None else []), norm)]
        flat = torch.cat(parts).tolist()  # one transfer per epoch
        i, wall = 0, time.time()
        for step, ms, _, w, _ in self._pending:
            values: dict[str, float] = {}
            for t in self.tasks:
                values[f"train/loss/{t}"] = flat[i]
                i += 1
            if w is not None:
                for t in self.tasks:
                    values[f"train/weight/{t}"] = flat[i]
                    i += 1
            values["train/shared_grad_norm"] = flat[i]
            i += 1
            values["train/step_ms"] = ms
            self._file.scalars(values, step, wall)
        self._pending.clear()

    def _probe_scalars(self, probes: Sequence[Probe], step: int) -> None:
        import torch

        for probe in probes:
            done = self._probed.get(probe.name, 0)
            if probe.name == "conflict" and len(probe.steps) > done:
                cos = torch.stack(probe._cos[done:]).cpu()  # the probe's own device buffers
                gms = torch.stack(probe._gms[done:]).cpu()
                for k, s in enumerate(probe.steps[done:]):
                    values = {}
                    for i, j in probe.pairs():
                        pair = f"{probe.tasks[i]}|{probe.tasks[j]}"
                        values[f"probes/conflict/cosine/{pair}"] = float(cos[k, i, j])
                        values[f"probes/conflict/magnitude_similarity/{pair}"] = float(
                            gms[k, i, j])
                    self._file.scalars(values, s)
                self._probed[probe.name] = len(probe.steps)
                result = probe.result()
                self._file.scalars({f"probes/conflict/fraction/{pair}": v for pair, v
                                    in result["conflict_fraction"].items()}, step)
            elif probe.name == "affinity" and len(probe.steps) > done:
                self._probed[probe.name] = len(probe.steps)
                matrix = probe.result()["matrix"]
                self._file.scalars({f"probes/affinity/{a}->{b}": v for a, row in matrix.items()
                                    for b, v in row.items() if a != b}, step)

    def end_epoch(self, global_step: int, entry: dict[str, Any], lr: float,
                  probes: Sequence[Probe] = ()) -> None:
        """Write the epoch's step values, its history ``entry`` (train losses, weights,
        validation metrics), the learning rate and the probes so far; then flush, so that a
        running TensorBoard sees the epoch."""
        self._flush_steps()
        values: dict[str, float] = {"epoch": float(entry["epoch"]), "lr": float(lr)}
        for t, v in entry.get("train_loss", {}).items():
            values[f"epoch/train_loss/{t}"] = v
        for t, v in (entry.get("weights") or {}).items():
            values[f"epoch/weight/{t}"] = v
        val_losses = []
        for t, metrics in entry.get("val", {}).items():
            for m, v in metrics.items():
                values[f"val/{t}/{m}"] = v
            val_losses.append(metrics.get("loss", math.nan))
        if val_losses:
            values["val/mean_loss"] = sum(val_losses) / len(val_losses)
        self._file.scalars(values, global_step)
        self._probe_scalars(probes, global_step)
        self._file.flush()

    def finish(self, result: dict[str, Any], global_step: int) -> None:
        """Final metrics of a finished trial (HParams metrics) and its session's end."""
        values = {f"hparams/test/{t}/{m}": v
                  for t, metrics in result["metrics"]["test"].items() for m, v in metrics.items()}
        values["hparams/best_epoch"] = float(result["best_epoch"])
        step_s = (result.get("timing") or {}).get("step_s")
        if step_s is not None:
            values["hparams/step_ms"] = step_s * 1000
        self._file.scalars(values, global_step)
        self._status = "ok"

    def close(self) -> None:
        """End the HParams session (a failure unless :meth:`finish` ran) and the file."""
        try:
            if self._status is None:
                self._flush_steps()  # a diverged trial's last steps show how it diverged
            self._file.summary(_session_end(self._status or "failed"))
        finally:
            self._file.close()


# --------------------------------------------------------------------------- sweep level


def _metric_tags(trials: Sequence[TrialSpec]) -> list[str]:
    tags = ["hparams/delta_m_task", "hparams/delta_m_metric", "hparams/step_ms",
            "hparams/best_epoch"]
    seen = set()
    for t in trials:
        key = json.dumps([t.dataset.name, t.dataset.params], sort_keys=True, default=repr)
        if key in seen:
            continue
        seen.add(key)
        dataset = data.load(t.dataset.name, **t.dataset.params)  # cached by the grid
        for task in dataset.tasks:
            tags += [f"hparams/test/{task.name}/{m}" for m in task.metrics]
    return list(dict.fromkeys(tags))


def write_experiment(run_dir: str | Path, trials: Sequence[TrialSpec]) -> Path:
    """The HParams experiment of the sweep at ``<run>/tensorboard/``: every hyperparameter
    with its values, and the metric tags; replaces the one of an earlier ``run``."""
    from tensorboard.plugins.hparams import summary_v2 as hp

    root = Path(run_dir) / FOLDER
    values: dict[str, list[Any]] = {}
    for t in trials:
        for key, value in hparams_of(t).items():
            if value not in values.setdefault(key, []):
                values[key].append(value)
    hparams = []
    for key, vals in values.items():
        same_type = len({type(v) for v in vals}) == 1
        hparams.append(hp.HParam(key, hp.Discrete(sorted(vals)) if same_type else None))
    metrics = [hp.Metric(tag, display_name=tag.removeprefix("hparams/"))
               for tag in _metric_tags(trials)]
    for old in root.glob(f"*{EXPERIMENT_SUFFIX}"):
        old.unlink()
    events = _EventFile(root, EXPERIMENT_SUFFIX)
    events.summary(hp.hparams_config_pb(hparams=hparams, metrics=metrics))
    events.close()
    return events.path


def write_delta_m(run_dir: str | Path, summary: pd.DataFrame,
                  records: Sequence[TrialRecord]) -> int:
    """Δm of each multi-task trial (``analysis.trial_summary``) as its HParams metrics, in
    a small event file of its folder (the one of an earlier report replaced). Trials
    without a TensorBoard folder are skipped; returns how many were written."""
    root = Path(run_dir) / FOLDER
    if summary.empty or not root.is_dir():
        return 0
    names = run_names([r.spec for r in records])
    steps = {r.id: len(r.history) for r in records}
    written = 0
    for row in summary.itertuples(index=False):
        folder = root / names.get(row.trial_id, "")
        if row.trial_id not in names or not folder.is_dir():
            continue
        for old in folder.glob(f"*{REPORT_SUFFIX}"):
            old.unlink()
        events = _EventFile(folder, REPORT_SUFFIX)
        events.scalars({"hparams/delta_m_task": row.delta_m_task,
                        "hparams/delta_m_metric": row.delta_m_metric},
                       steps.get(row.trial_id, 0))
        events.close()
        written += 1
    return written


# --------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run directory (of a finished run or one in progress)")
    parser.add_argument("--port", type=int, help=f"port (default: {DEFAULT_PORT} if free, "
                        "else any free one)")


def _free_port() -> int:
    for port in (DEFAULT_PORT, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise ConfigError("no free port on 127.0.0.1")


def main(args: argparse.Namespace) -> int:
    """Serve ``RUN_DIR/tensorboard`` until Ctrl-C (or SIGTERM); prints the URL."""
    import logging

    logdir = Path(args.run_dir) / FOLDER
    if not logdir.is_dir():
        raise ConfigError(f"{args.run_dir}: no TensorBoard events ({logdir} missing; was the "
                          "sweep run with tensorboard.enabled = false?)")
    if args.port is not None and not 0 < args.port < 65536:
        raise ConfigError("--port: must be 1..65535")
    import warnings

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per HTTP request
    port = args.port or _free_port()
    with warnings.catch_warnings():  # its vendored html5lib's deprecation, not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        from tensorboard import program

        board = program.TensorBoard()
        board.configure(logdir=str(logdir.resolve()), host="127.0.0.1", port=port,
                        reload_interval=RELOAD_S, reload_multifile=True, load_fast="false")
        try:
            url = board.launch()
        except program.TensorBoardServerException as err:
            raise ConfigError(f"--port {port}: {err.msg}") from None
    print(f"TensorBoard for {args.run_dir} at {url} (Ctrl-C stops it)", flush=True)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server = getattr(board, "_server", None)
        if server is not None:
            server.shutdown()
    print("TensorBoard stopped", flush=True)
    return 0
