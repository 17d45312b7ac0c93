"""geventsched: a Redis pub/sub job scheduler on gevent."""

__version__ = "0.1.0"
