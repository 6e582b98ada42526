"""The mesh: the `networks` supervisor (manager) and one `network <id>` supervisor per joined
network, with its `core` actor (peers, membership, rpc, channels, streams, state), its broker
link and its channel pumps."""
