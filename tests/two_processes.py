"""Launch a test worker in two real processes with `accelerate launch`, bounded by a timeout."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_processes(
    config: Path, worker: Path, *args: str, timeout_s: float, env: dict | None = None
) -> float:
    """Run ``worker`` under ``config``; returns the seconds it took. Fails the test on error or timeout."""
    # one thread per process on 2 cores; nothing is downloaded (the workers build their models and data)
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "--main_process_port",
        str(free_port()),  # parallel test runs must not meet on the default port
        str(worker),
        *args,
    ]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the launcher (torch elastic) then ends its workers, which run in sessions of
        # their own and would otherwise be left behind
        proc.terminate()
        try:
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        pytest.fail(f"{config.name}: no result in {timeout_s} s (a hang in a collective?):\n{stderr[-4000:]}")
    assert proc.returncode == 0, f"{config.name}: worker failed (exit {proc.returncode}):\n{stderr[-6000:]}"
    return time.monotonic() - start
