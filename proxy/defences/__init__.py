"""The cache defences' pure parts: top-K counting, key patterns, TTL jitter, a byte-budget LRU."""
