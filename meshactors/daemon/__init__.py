"""The daemon process: its root supervisor, control socket, lifecycle and locking."""
