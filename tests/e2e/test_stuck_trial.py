"""A trial stuck before its next step boundary is killed past its time limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A plugin strategy that hangs inside its 2nd step, where the trial's own time-limit
# check (at step boundaries) never runs again.
STUCK = '''
import time

from strategies.weighting import WEIGHTING, LossWeighting


@WEIGHTING.register("stuck")
class Stuck(LossWeighting):
    """Test double: sleeps for an hour in its 2nd step."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def combine(self, losses):
        self.calls += 1
        if self.calls == 2:
            time.sleep(3600)
        return losses.sum()
'''


def test_a_stuck_trial_is_killed_past_its_limit_and_the_sweep_goes_on(tmp_path):
    (tmp_path / "stuck.py").write_text(STUCK)
    (tmp_path / "sweep.toml").write_text(textwrap.dedent("""
        name = "stuck"
        plugins = ["stuck.py"]
        datasets = [{ name = "mmoe_synthetic", num_train = 256, num_val = 64, num_test = 64, input_dim = 16 }]
        sharing = ["hps"]
        weighting = ["stuck", "ew"]
        [model]
        hidden = [8]
        [train]
        epochs = 1
        batch_size = 64
        [tensorboard]
        enabled = false
    """))
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "sweep.toml", "--out", "run", "--workers", "2",
         "--time-limit", "8", "--no-progress"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, timeout=300)
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr  # some trial failed
    records = [json.loads(p.read_text()) for p in (tmp_path / "run" / "trials").glob("*.json")]
    by_weighting = {r["spec"]["weighting"]["name"]: r for r in records if r["spec"]["tasks"] is None}
    stuck = by_weighting["stuck"]
    assert stuck["status"] == "timeout"
    assert "without a step boundary" in stuck["error"]
    assert by_weighting["ew"]["status"] == "ok"
    assert len(records) == 2 + 2  # both multi-task trials and the 2 tasks' baselines
    # Killed 10 s (KILL_AFTER_S) after its 8 s limit, not after the hour it asked for.
    assert elapsed < 150
