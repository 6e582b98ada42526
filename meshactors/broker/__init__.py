"""The WebSocket relay that routes sealed frames between daemons of one network."""
