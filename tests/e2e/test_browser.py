"""report.html in headless Chromium: every image loads, nothing is logged to the console,
no resource is blocked by the page's Content-Security-Policy; a screenshot is kept.

Needs Debian's ``chromium`` (``apt-get install -y chromium``); skipped when it is not
installed, except under CI (``CI`` set), where a missing browser fails the test.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from unit.test_report import EVIL_DATASET, synthetic_run

from bench.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-default-apps", "--disable-extensions", "--mute-audio",
    "--enable-logging=stderr", "--v=0",
]

# Injected before the page's own CSP <meta>, so this inline script may run; it records
# errors (also those of images, which do not bubble), CSP violations and console.error
# calls, and after `load` writes the verdict into the DOM for --dump-dom.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(
  "error: " + (e.message || (e.target && e.target.tagName + " " + (e.target.alt || "")))), true);
document.addEventListener("securitypolicyviolation",
  e => window.__errors.push("csp: " + e.violatedDirective + " " + e.blockedURI));
const __consoleError = console.error;
console.error = (...a) => { window.__errors.push("console: " + a.join(" ")); __consoleError(...a); };
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const out = document.createElement("pre");
  out.id = "__probe";
  out.textContent = JSON.stringify({images: imgs.length, bad: bad, errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / "profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )


def _probe(page: Path, tmp: Path) -> tuple[dict, list[str]]:
    """Load ``page`` with the probe injected; the probe's verdict and the console lines."""
    text = page.read_text("utf-8")
    probed = tmp / f"probed-{page.name}"
    probed.write_text(text.replace("<head>", "<head>\n" + PROBE, 1), "utf-8")
    proc = _chromium(tmp, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    match = re.search(r'<pre id="__probe">(.*?)</pre>', proc.stdout, re.S)
    assert match, f"no verdict from the page (rc {proc.returncode}): {proc.stderr[-2000:]}"
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(html.unescape(match.group(1))), console


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed")
    datasets = {"toy3": {"x": "binary", "y": "binary", "z": "regression"},
                EVIL_DATASET: {"p": "binary", "q": "binary"}}
    run = synthetic_run(tmp_path_factory.mktemp("browser") / "run", seeds=(0, 1),
                        datasets=datasets)
    write_report(run)
    return run / "report.html"


def test_report_renders_without_errors(report, tmp_path):
    verdict, console = _probe(report, tmp_path)
    n_figures = report.read_text("utf-8").count("<img ")
    assert verdict["images"] == n_figures > 10
    assert verdict["bad"] == []
    assert verdict["errors"] == []
    assert console == []

    shot = tmp_path / "report.png"  # kept in pytest's tmp dir for a look after a failure
    proc = _chromium(tmp_path, "--window-size=1280,2400", "--hide-scrollbars",
                     f"--screenshot={shot}", report.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000


def test_probe_catches_broken_and_external_images(report, tmp_path):
    # The check itself must fail on a broken image and on an external resource (which the
    # report's Content-Security-Policy blocks).
    bad = tmp_path / "bad.html"
    bad.write_text(report.read_text("utf-8").replace(
        "</body>", '<img alt="broken" src="data:image/png;base64,AAAA">'
        '<img alt="external" src="http://example.invalid/x.png"></body>'), "utf-8")
    verdict, console = _probe(bad, tmp_path)
    assert sorted(verdict["bad"]) == ["broken", "external"]
    assert any(e.startswith("csp: img-src") for e in verdict["errors"])
    assert console
