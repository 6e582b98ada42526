"""The replicated key-value state of a network: the clock, the map and its merge, the frames
peers exchange, and the part of a network's core that owns it."""
