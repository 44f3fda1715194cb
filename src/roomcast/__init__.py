"""roomcast: an async chat server where every room is a broadcast channel."""

__version__ = "0.1.0"
