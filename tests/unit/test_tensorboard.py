"""TensorBoard logging: event files read back with TensorBoard's own reader, HParams
entries, ids and results unchanged by logging, `mtlbench tensorboard` over HTTP, and the
HParams page in headless Chromium; the report's learning curves."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from bench import analysis, store, tensorboard
from bench.cli import main
from bench.config import load_spec
from bench.grid import expand
from bench.report.results import curve_frame
from bench.trial import execute

# penguins: 200 training samples, batch 64 -> 4 steps per epoch; 3 epochs = 12 steps.
STEPS_PER_EPOCH, EPOCHS, EVERY = 4, 3, 3
SWEEP = f"""
name = "tb"
seeds = [0]
datasets = ["penguins"]
sharing = ["hps"]
weighting = ["ew", "mgda"]
executor = "inline"

[model]
hidden = [16]

[train]
epochs = {EPOCHS}
batch_size = 64

[probes]
conflict_every = 2
affinity_every = 5

[tensorboard]
every = {EVERY}
"""
TASKS = ["species", "sex", "body_mass"]
MTL_RUNS = ["penguins/hps/ew/seed 0", "penguins/hps/mgda/seed 0"]
BASELINE_RUNS = [f"penguins/stl/ew task={t}/seed 0" for t in TASKS]


def _accumulator(folder: Path) -> event_accumulator.EventAccumulator:
    acc = event_accumulator.EventAccumulator(str(folder))
    acc.Reload()
    return acc


def _steps(acc: event_accumulator.EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished, reported sweep with TensorBoard events (2 strategies, 3 baselines)."""
    tmp = tmp_path_factory.mktemp("tb")
    (tmp / "sweep.toml").write_text(SWEEP, "utf-8")
    out = tmp / "run"
    assert main(["run", str(tmp / "sweep.toml"), "--out", str(out), "--no-progress"]) == 0
    assert main(["report", str(out)]) == 0
    return out


def test_run_folders_read_as_dataset_sharing_weighting_seed(run):
    root = run / tensorboard.FOLDER
    folders = sorted(str(p.parent.relative_to(root)) for p in root.rglob("events.out.*")
                     if p.parent != root)
    assert sorted(set(folders)) == sorted(MTL_RUNS + BASELINE_RUNS)


def test_step_and_epoch_scalars(run):
    acc = _accumulator(run / tensorboard.FOLDER / MTL_RUNS[1])
    total = STEPS_PER_EPOCH * EPOCHS
    step_points = list(range(0, total, EVERY))
    epoch_ends = [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]
    for t in TASKS:
        assert _steps(acc, f"train/loss/{t}") == step_points
        assert _steps(acc, f"train/weight/{t}") == step_points  # mgda's weights
        assert _steps(acc, f"epoch/train_loss/{t}") == epoch_ends
        assert _steps(acc, f"val/{t}/loss") == epoch_ends
    assert _steps(acc, "train/shared_grad_norm") == step_points
    assert all(e.value > 0 for e in acc.Scalars("train/shared_grad_norm"))
    assert all(e.value > 0 for e in acc.Scalars("train/step_ms"))
    assert [e.value for e in acc.Scalars("lr")] == pytest.approx([1e-3] * EPOCHS)
    assert _steps(acc, "val/sex/auc") == epoch_ends
    # The epoch values are the record's history, exactly.
    rec = next(r for r in store.RunStore(run).records() if r.spec.weighting.name == "mgda")
    assert [e.value for e in acc.Scalars("val/sex/loss")] == pytest.approx(
        [h.val["sex"]["loss"] for h in rec.history], rel=1e-6)
    assert [e.value for e in acc.Scalars("epoch/weight/sex")] == pytest.approx(
        [h.weights["sex"] for h in rec.history], rel=1e-6)
    # Probes: the cosine at every probed step, affinities per epoch.
    pair = "species|sex"
    assert _steps(acc, f"probes/conflict/cosine/{pair}") == rec.probes["conflict"]["steps"]
    assert [e.value for e in acc.Scalars(f"probes/conflict/cosine/{pair}")] == pytest.approx(
        rec.probes["conflict"]["pairs"][pair]["cosine"], rel=1e-6)
    assert _steps(acc, f"probes/conflict/fraction/{pair}") == epoch_ends
    assert acc.Scalars("probes/affinity/species->sex")[-1].value == pytest.approx(
        rec.probes["affinity"]["matrix"]["species"]["sex"], rel=1e-6)
    # ew applies no per-step weights of its own: no weight tags, the rest is there.
    ew = _accumulator(run / tensorboard.FOLDER / MTL_RUNS[0])
    assert _steps(ew, "train/loss/sex") == step_points


def _session(acc: event_accumulator.EventAccumulator, which: str):
    content = acc.SummaryMetadata(f"_hparams_/{which}").plugin_data.content
    return plugin_data_pb2.HParamsPluginData.FromString(content)


def test_hparams_sessions_metrics_and_experiment(run):
    records = {r.id: r for r in store.RunStore(run).records()}
    names = tensorboard.run_names([r.spec for r in records.values()])
    by_name = {name: trial_id for trial_id, name in names.items()}
    summary = analysis.trial_summary(store.load(run, quiet=True)).set_index("trial_id")
    for name in MTL_RUNS + BASELINE_RUNS:
        rec = records[by_name[name]]
        acc = _accumulator(run / tensorboard.FOLDER / name)
        start = _session(acc, "session_start_info").session_start_info
        hp = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
        assert hp == tensorboard.hparams_of(rec.spec)
        assert hp["dataset"] == "penguins" and hp["seed"] == 0.0
        assert hp["weighting"] == rec.spec.weighting.name
        assert hp["task"] == (",".join(rec.spec.tasks) if rec.spec.tasks else "all")
        assert _session(acc, "session_end_info").session_end_info.status == 1  # SUCCESS
        for t in rec.tasks:
            for m, v in rec.metrics["test"][t].items():
                assert acc.Scalars(f"hparams/test/{t}/{m}")[-1].value == pytest.approx(v, rel=1e-6)
        assert acc.Scalars("hparams/step_ms")[-1].value == pytest.approx(
            rec.timing.step_s * 1000, rel=1e-6)
        if name in MTL_RUNS:  # Δm, written by the report
            for key in ("delta_m_task", "delta_m_metric"):
                assert acc.Scalars(f"hparams/{key}")[-1].value == pytest.approx(
                    summary.loc[rec.id, key], rel=1e-5)
        else:
            assert "hparams/delta_m_task" not in acc.Tags()["scalars"]
    # The experiment: every hyperparameter and the metric tags, at the top.
    root = _accumulator(run / tensorboard.FOLDER)
    experiment = _session(root, "experiment").experiment
    assert {"dataset", "sharing", "weighting", "seed", "task", "train.lr",
            "weighting.max_iter"} <= {h.name for h in experiment.hparam_infos}
    tags = {m.name.tag for m in experiment.metric_infos}
    assert {"hparams/delta_m_task", "hparams/delta_m_metric", "hparams/step_ms",
            "hparams/test/sex/auc", "hparams/test/body_mass/mse"} <= tags


def test_report_rewrites_delta_m_once(run):
    assert main(["report", str(run)]) == 0
    folder = run / tensorboard.FOLDER / MTL_RUNS[0]
    assert len(list(folder.glob(f"*{tensorboard.REPORT_SUFFIX}"))) == 1


def test_ids_and_records_do_not_depend_on_logging(run, tmp_path):
    spec_file = tmp_path / "sweep.toml"
    spec_file.write_text(SWEEP, "utf-8")
    off = load_spec(spec_file, overrides=["tensorboard.enabled=false", "tensorboard.every=7"])
    on = load_spec(spec_file)
    assert not off.tensorboard.enabled and on.tensorboard.enabled
    assert on.to_dict() == off.to_dict()  # the manifest: a run resumes either way
    plain = expand(off)
    logged = tensorboard.attach(expand(on), on.tensorboard, tmp_path)
    assert [t.id for t in logged] == [t.id for t in plain]
    assert all(t.tensorboard is not None for t in logged)
    assert tensorboard.attach(plain, off.tensorboard, tmp_path) == plain
    assert {p.stem for p in (run / "trials").glob("*.json")} == {t.id for t in plain}
    assert all(r.spec.tensorboard is None for r in store.RunStore(run).records())
    assert all("tensorboard" not in json.loads(p.read_text())["spec"]
               for p in (run / "trials").glob("*.json"))


def test_disabled_logging_writes_no_events(tmp_path):
    (tmp_path / "sweep.toml").write_text(SWEEP.replace('"ew", "mgda"', '"ew"'), "utf-8")
    out = tmp_path / "run"
    assert main(["run", str(tmp_path / "sweep.toml"), "--out", str(out), "--no-progress",
                 "--set", "tensorboard.enabled=false"]) == 0
    assert not (out / tensorboard.FOLDER).exists()
    assert main(["report", str(out)]) == 0
    assert main(["tensorboard", str(out)]) == 2  # nothing to serve: a one-line error


def test_logging_changes_no_result(tmp_path):
    """Same seed, CPU: metrics, history (bar seconds) and probes identical with and
    without events, logging at every step."""
    (tmp_path / "sweep.toml").write_text(SWEEP, "utf-8")
    spec = next(t for t in expand(load_spec(tmp_path / "sweep.toml"))
                if t.weighting.name == "mgda")
    logged = dataclasses.replace(spec, tensorboard={"dir": str(tmp_path / "tb"), "every": 1})
    a, b = execute(spec), execute(logged)
    assert a.status == b.status == "ok"
    assert a.id == b.id and a.spec.identity() == b.spec.identity()
    assert a.to_dict()["spec"] == b.to_dict()["spec"]
    assert a.metrics == b.metrics
    assert a.best_epoch == b.best_epoch
    strip = [h.model_dump(exclude={"seconds"}) for h in a.history]
    assert strip == [h.model_dump(exclude={"seconds"}) for h in b.history]
    assert a.probes == b.probes
    acc = _accumulator(tmp_path / "tb")
    assert _steps(acc, "train/loss/sex") == list(range(STEPS_PER_EPOCH * EPOCHS))


def test_a_diverged_trial_ends_its_session_as_failed(tmp_path):
    (tmp_path / "sweep.toml").write_text(SWEEP, "utf-8")
    spec = next(t for t in expand(load_spec(tmp_path / "sweep.toml", overrides=[
        "train.lr=10.0", "train.optimizer=sgd", "train.epochs=20"])) if t.weighting.name == "ew")
    rec = execute(dataclasses.replace(spec, tensorboard={"dir": str(tmp_path / "tb"),
                                                         "every": 1}))
    assert rec.status == "diverged"
    acc = _accumulator(tmp_path / "tb")
    assert _session(acc, "session_end_info").session_end_info.status == 2  # FAILURE
    assert len(acc.Scalars("train/loss/body_mass")) > 0


# --------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={
        "X-XSRF-Protected": "1", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _wait_for(check, what: str, attempts: int = 240):
    """``check()`` once it returns something truthy (TensorBoard loads in the background)."""
    for _ in range(attempts):
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"TensorBoard never served {what}")


@pytest.fixture(scope="module")
def server(run):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "tensorboard", str(run), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        assert match, f"no URL printed: {line!r} {proc.stderr.read() if proc.poll() else ''}"
        assert match.group(1) == f"http://127.0.0.1:{port}/"
        yield match.group(1), proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_tensorboard_serves_runs_scalars_and_hparams(server):
    url, _ = server
    runs = _wait_for(lambda: (r := _get(url + "data/runs")) and
                     set(MTL_RUNS) <= set(r) and r, "the run list")
    assert set(MTL_RUNS + BASELINE_RUNS) <= set(runs)
    tags = _wait_for(lambda: _get(url + "data/plugin/scalars/tags").get(MTL_RUNS[1]),
                     "scalar tags")
    assert {"train/loss/sex", "train/weight/sex", "val/sex/auc", "lr"} <= set(tags)
    query = urllib.parse.urlencode({"run": MTL_RUNS[1], "tag": "train/loss/sex"})
    points = _get(url + f"data/plugin/scalars/scalars?{query}")
    assert [p[1] for p in points] == list(range(0, STEPS_PER_EPOCH * EPOCHS, EVERY))
    experiment = _get(url + "data/plugin/hparams/experiment", {"experimentName": ""})
    assert {"dataset", "weighting", "seed"} <= {h["name"] for h in experiment["hparamInfos"]}
    groups = _get(url + "data/plugin/hparams/session_groups", {
        "experimentName": "", "allowedStatuses": [
            "STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [{"hparam": "weighting"}, {"metric": {"tag": "hparams/delta_m_task"}}],
        "startIndex": 0, "sliceSize": 100})
    sessions = {s["name"]: s for g in groups["sessionGroups"] for s in g["sessions"]}
    assert set(MTL_RUNS + BASELINE_RUNS) <= set(sessions)
    mgda = sessions[MTL_RUNS[1]]
    values = {m["name"]["tag"]: m["value"] for m in mgda["metricValues"]}
    assert "hparams/delta_m_task" in values and "hparams/test/sex/auc" in values


def test_tensorboard_stops_cleanly_on_ctrl_c(run):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "tensorboard", str(run), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert f"127.0.0.1:{port}" in proc.stdout.readline()
        _wait_for(lambda: _get(f"http://127.0.0.1:{port}/data/runs"), "the run list")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped" in out
    assert "Traceback" not in err


def test_tensorboard_follows_a_run_in_progress(tmp_path):
    """Served before a trial writes anything, it shows the trial and each new epoch."""
    (tmp_path / "sweep.toml").write_text(SWEEP, "utf-8")
    sweep = load_spec(tmp_path / "sweep.toml")
    out = tmp_path / "run"
    trials = tensorboard.attach(expand(sweep), sweep.tensorboard, out)
    tensorboard.write_experiment(out, trials)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "tensorboard", str(out), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        assert url in proc.stdout.readline()
        _wait_for(lambda: _get(url + "data/plugin/hparams/experiment",
                               {"experimentName": ""})["hparamInfos"], "the experiment")
        spec = next(t for t in trials if t.weighting.name == "mgda")
        log = tensorboard.TrialLogger(spec.tensorboard, spec)
        log.begin(TASKS)
        name = tensorboard.run_names(trials)[spec.id]
        query = urllib.parse.urlencode({"run": name, "tag": "val/mean_loss"})

        def points():
            return _get(url + f"data/plugin/scalars/scalars?{query}")

        for epoch in range(2):  # the trial's epochs, as the loop writes them
            entry = {"epoch": epoch, "train_loss": dict.fromkeys(TASKS, 1.0),
                     "val": {t: {"loss": 0.5 - 0.1 * epoch} for t in TASKS}}
            log.end_epoch(4 * (epoch + 1), entry, 1e-3)
            _wait_for(lambda n=epoch + 1: points() if len(points()) == n else None,
                      f"epoch {epoch}", attempts=480)
        log.close()
        assert [p[1] for p in points()] == [4, 8]
    finally:
        proc.kill()
        proc.wait()


def test_port_in_use_is_a_one_line_error(run, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["tensorboard", str(run), "--port", str(port)]) == 2
    assert f"--port {port}" in capsys.readouterr().err


# --------------------------------------------------------------------------- HParams page

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Collects the text of the page including open shadow roots (TensorBoard's Polymer
# dashboards), once every expected name shows up or after ~60 s.
DEEP_TEXT = """new Promise(resolve => {
  const want = %s;
  const text = () => {
    const parts = [];
    const walk = n => {
      if (n.shadowRoot) walk(n.shadowRoot);
      if (n.nodeType === 3) parts.push(n.textContent);
      for (const c of n.childNodes) walk(c);
    };
    walk(document.documentElement);
    return parts.join(" ");
  };
  let tries = 0;
  const poll = () => {
    const t = text();
    if (want.every(w => t.includes(w)) || ++tries > 240) resolve(t); else setTimeout(poll, 250);
  };
  poll();
})"""


class _DevTools:
    """Chromium's DevTools protocol over --remote-debugging-pipe (fds 3 and 4)."""

    def __init__(self, profile: Path) -> None:
        cmd_r, self._cmd_w = os.pipe()
        self._resp_r, resp_w = os.pipe()

        def fds() -> None:
            os.dup2(cmd_r, 3)
            os.dup2(resp_w, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--disable-background-networking", "--mute-audio",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=fds, close_fds=False, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(resp_w)
        self._buf = b""
        self._id = 0

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._resp_r, 1 << 16)
                assert chunk, "Chromium closed the pipe"
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(reply["error"].get("message", str(reply)))
                return reply["result"]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._resp_r)


def test_hparams_page_lists_the_trials_in_chromium(server, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (make system-deps)")
    url, _ = server
    want = ["mgda", "penguins", "delta_m_task"]
    browser = _DevTools(tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", {"url": url + "#hparams"})["targetId"]
        session = browser.call("Target.attachToTarget",
                               {"targetId": target, "flatten": True})["sessionId"]
        for _ in range(20):  # the app may replace the page's context while it starts
            try:
                result = browser.call("Runtime.evaluate", {
                    "expression": DEEP_TEXT % json.dumps(want), "awaitPromise": True,
                    "returnByValue": True}, session)
                break
            except RuntimeError as err:
                if "context" not in str(err):
                    raise
                time.sleep(0.25)
    finally:
        browser.close()
    text = result["result"]["value"]
    for w in want:
        assert w in text, f"{w!r} not on the HParams page: {text[:2000]}"


# --------------------------------------------------------------------------- report


def test_report_has_learning_curves_with_flags(run):
    md = (run / "report.md").read_text("utf-8")
    assert "## Learning curves" in md
    assert "![penguins: validation loss per epoch" in md
    assert (run / "plots" / "curves-penguins.png").stat().st_size > 0
    html = (run / "report.html").read_text("utf-8")
    assert "Learning curves" in html
    records = list(store.RunStore(run).records())
    tidy = store.load(run, quiet=True)
    labels = tidy.drop_duplicates("trial_id").set_index("trial_id")
    labels["strategy"] = [analysis.strategy_label(s, w) for s, w in
                          zip(labels["sharing"], labels["weighting"], strict=True)]
    curves = curve_frame(records, labels)
    assert len(curves) == sum(len(r.history) * len(r.tasks) for r in records)
    flags = curves.drop_duplicates("trial_id").set_index("trial_id")["last_epoch_best"]
    for r in records:
        assert flags[r.id] == (r.best_epoch == EPOCHS - 1)
    if flags.any():  # 3 epochs at lr 1e-3: the loss is still falling
        assert "best = last epoch:" in md
