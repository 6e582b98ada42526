"""The actor runtime: actors with bounded inboxes, ask with deadlines, supervisors, the inspect registry."""
