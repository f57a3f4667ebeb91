"""shardproxy: a Redis-protocol sharding proxy with declarative online re-sharding."""

__version__ = "0.1.0"
