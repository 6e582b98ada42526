"""Client side of the control socket, used by the CLI and by applications."""
