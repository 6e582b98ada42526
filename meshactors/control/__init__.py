"""The control plane: the Unix socket (and optional TCP) listeners, one `client` actor per
connection, JSON lines and HTTP framing, sessions and the event stream."""
