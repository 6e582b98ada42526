"""Wire protocols: local IPC and peer frames (each a strict cattrs converter over attrs), and
the daemon <-> broker protocol (broker.py), which the broker and the link both import."""
