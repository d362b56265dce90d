"""A Ray address is checked before anything runs: it must speak Ray's gRPC greeting."""

from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from bench.errors import ConfigError
from bench.executors.base import check_ray_address


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_silent_server_is_refused_within_the_connect_timeout():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True).start()
    start = time.monotonic()
    with pytest.raises(ConfigError, match="says nothing, not Ray's gRPC"):
        check_ray_address(f"127.0.0.1:{port}")
    assert time.monotonic() - start < 30
    server.close()


def test_an_http_server_is_refused():
    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ConfigError, match=r"answers b'.*not Ray's gRPC"):
            check_ray_address(f"127.0.0.1:{httpd.server_address[1]}")
    finally:
        httpd.shutdown()


def test_a_real_ray_head_is_accepted():
    pytest.importorskip("ray")
    ray_cli = Path(sys.executable).with_name("ray")
    if not ray_cli.exists():
        ray_cli = Path(shutil.which("ray") or "ray")
    port = _free_port()
    # Ray's socket paths must stay under 107 bytes: a short folder, not pytest's tmp_path.
    env_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    start = subprocess.run(
        [str(ray_cli), "start", "--head", "--port", str(port), "--num-cpus", "1",
         "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", env_tmp],
        capture_output=True, text=True, timeout=180)
    try:
        assert start.returncode == 0, start.stderr
        check_ray_address(f"127.0.0.1:{port}")  # no error: GCS answers with SETTINGS
    finally:
        subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(env_tmp, ignore_errors=True)
