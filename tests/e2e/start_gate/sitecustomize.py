"""Imported by `site` in every Python process whose PYTHONPATH names this directory: when
START_GATE names a FIFO and the command line holds the word START_GATE_FOR, the process waits
there, before it runs anything, until the test that opened the FIFO to write closes it. A test
so knows that process exists and holds it there. START_GATE_PID_FILE, if set, is where the
process writes its pid first, so the test can kill it whatever happens."""

import os
import sys

_gate = os.environ.get("START_GATE")
if _gate and os.environ.get("START_GATE_FOR") in sys.orig_argv:
    if _pid_file := os.environ.get("START_GATE_PID_FILE"):
        with open(_pid_file, "w") as _out:
            _out.write(str(os.getpid()))
    with open(_gate, "rb") as _fifo:
        _fifo.read()
