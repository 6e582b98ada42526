"""One supervisor per joined network: broker link, peers, RPC and channel pumps."""
