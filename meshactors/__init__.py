"""meshactors: a mesh daemon on trio, shared by local programs over a Unix socket."""

from meshactors._version import __version__

__all__ = ["__version__"]
