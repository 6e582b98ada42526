"""Imported by `site` in every Python process whose PYTHONPATH names this directory: when
START_GATE names a FIFO and the command line holds the word START_GATE_FOR, the process waits
there until the test that opened the FIFO to write closes it. A test so knows that process
exists and holds it there: before it runs anything, or, when START_GATE_IMPORT names a module,
as it first imports that module (a signal that arrives meanwhile is raised from the import).
START_GATE_PID_FILE, if set, is where the process writes its pid first, so the test can kill it
whatever happens."""

import os
import sys


def _wait_at_gate(gate: str) -> None:
    with open(gate, "rb") as fifo:
        fifo.read()


class _ImportGate:
    """A meta path finder that finds nothing: it only waits at the gate, once, when `module`
    is first imported."""

    def __init__(self, module: str, gate: str) -> None:
        self.module, self.gate = module, gate

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == self.module:
            sys.meta_path.remove(self)
            _wait_at_gate(self.gate)


_gate = os.environ.get("START_GATE")
if _gate and os.environ.get("START_GATE_FOR") in sys.orig_argv:
    if _pid_file := os.environ.get("START_GATE_PID_FILE"):
        with open(_pid_file, "w") as _out:
            _out.write(str(os.getpid()))
    if _module := os.environ.get("START_GATE_IMPORT"):
        sys.meta_path.insert(0, _ImportGate(_module, _gate))
    else:
        _wait_at_gate(_gate)
