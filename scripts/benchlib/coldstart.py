"""Cold start: `meshactors daemon up` started from the CLI in a fresh home, timed from the
process start to its READY=1 datagram on a real `$NOTIFY_SOCKET` (the moment systemd would
call the service started), then one `status` on the control socket to show READY meant it.
The package's bytecode is compiled before the first start, as an installed package has it."""

from __future__ import annotations

import compileall
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import meshactors
from meshactors.client.sync import SyncClient
from scripts.benchlib.stats import percentile

READY_TIMEOUT = 60.0  # seconds one start may take before the measurement gives up
STOP_TIMEOUT = 10.0  # seconds a daemon may take to exit after SIGTERM
MAX_DATAGRAM = 4096  # bytes of one sd_notify message read


def measure(runs: int) -> dict[str, Any]:
    """`runs` cold starts, each in its own temporary home: the p50 and max in milliseconds and
    every sample. meshactors' bytecode is compiled first, as `pip install` leaves a package:
    under PYTHONDONTWRITEBYTECODE (this checkout's environment) every start would otherwise
    compile its ~145 modules from source."""
    compileall.compile_dir(Path(meshactors.__file__).parent, quiet=1)
    samples = [_one_start() for _ in range(runs)]
    return {
        "runs": runs,
        "p50_ms": round(percentile(samples, 0.5) * 1000, 1),
        "max_ms": round(max(samples) * 1000, 1),
        "samples_ms": [round(sample * 1000, 1) for sample in samples],
    }


def _one_start() -> float:
    """Seconds from spawning `daemon up` to its READY=1; the daemon answers `status` after."""
    with tempfile.TemporaryDirectory(prefix="coldstart-") as tmp:
        home = Path(tmp)
        notify_path = str(home / "notify")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHACTORS_")}
        env |= {"MESHACTORS_HOME": str(home), "NOTIFY_SOCKET": notify_path}
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
            manager.bind(notify_path)
            manager.settimeout(READY_TIMEOUT)
            began = time.perf_counter()
            daemon = subprocess.Popen(
                [sys.executable, "-m", "meshactors", "daemon", "up"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                elapsed = _until_ready(manager, began)
                with SyncClient.connect(home / "daemon.sock", timeout=READY_TIMEOUT) as client:
                    client.call("status")
            finally:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(STOP_TIMEOUT)
    return elapsed


def _until_ready(manager: socket.socket, began: float) -> float:
    """Seconds from `began` to the READY=1 datagram (TimeoutError if none comes)."""
    while True:
        message = manager.recv(MAX_DATAGRAM)
        if b"READY=1" in message.split(b"\n"):
            return time.perf_counter() - began
