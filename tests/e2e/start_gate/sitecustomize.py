"""Imported by `site` in every Python process whose PYTHONPATH names this directory: when
START_GATE names a FIFO and the command line holds the word START_GATE_FOR, the process waits
there, before it runs anything, until the test that opened the FIFO to write closes it. A test
so knows that process exists and holds it there."""

import os
import sys

_gate = os.environ.get("START_GATE")
if _gate and os.environ.get("START_GATE_FOR") in sys.orig_argv:
    with open(_gate, "rb") as _fifo:
        _fifo.read()
