"""The migration's background jobs over live backends: backfill and its lease, verify,
cleanup, big-key copies, the phase runner and the plan forecast."""
