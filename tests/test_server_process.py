"""`python -m server` as a real process: start on a free port, become ready, vocode, scrape, SIGTERM, exit 0."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from bench.common import free_port, wait_ready
from model.audio import HOP, N_MELS

ROOT = Path(__file__).resolve().parent.parent


def test_server_process_serves_and_exits_cleanly_on_sigterm(tiny_weights):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOCODER_")}
    env["VOCODER_PORT"] = "1"  # the flag must win over the environment
    proc = subprocess.Popen([sys.executable, "-m", "server", "--port", str(port), "--weights", str(tiny_weights),
                             "--device", "cpu"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        wait_ready(proc, url, timeout=120)

        buf = io.BytesIO()
        np.save(buf, np.random.default_rng(0).normal(-5, 2, (N_MELS, 16)).astype(np.float32))
        r = httpx.post(url + "/v1/vocode", params={"rho": "fast", "seed": 1}, content=buf.getvalue(),
                       headers={"Content-Type": "application/x-npy", "X-Request-Id": "proc-test-1"}, timeout=60)
        assert r.status_code == 200, r.text
        assert sf.read(io.BytesIO(r.content))[0].shape == (16 * HOP,)
        metrics = httpx.get(url + "/metrics", timeout=5).text
        assert 'vocoder_request_duration_seconds_count{route="/v1/vocode",status="200"} 1.0' in metrics

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "Traceback" not in out
        assert "proc-test-1" in out and '"steps"' in out  # one JSON log line per request
        assert "Finished server process" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
