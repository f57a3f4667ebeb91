"""Supervisor and worker processes (`workers: N`): spawning, reloads, merged status and
metrics."""
