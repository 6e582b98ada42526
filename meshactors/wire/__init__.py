"""Wire protocols: local IPC and peer frames, each a strict cattrs converter over attrs."""
