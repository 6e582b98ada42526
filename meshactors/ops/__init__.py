"""The ops a connection may run: the op table (`optable`) and one module of ops per area."""
