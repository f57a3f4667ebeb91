"""Pure routing: rings and hashes, the immutable topology, plans of fragments and merges."""
