"""The daemon process: its root supervisor and lifecycle (main), the pid-file lock, the outbox
(durable delivery), the embedded broker actor, services (what op handlers reach) and sd_notify;
the control socket is control/."""
