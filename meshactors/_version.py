"""The daemon version, single source for packaging and the IPC `version` op."""

__version__ = "0.1.0"
