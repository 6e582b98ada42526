"""Wire protocols: local IPC and daemon-to-daemon frames, each a strict cattrs converter over attrs classes."""
