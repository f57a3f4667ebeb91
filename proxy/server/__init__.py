"""The composition root and its lifecycle: the proxy server, the lifecycle steps it shares with
the supervisor (signals, owned tasks, reload outcomes, config metrics), reloads, status views,
admin HTTP, ACL and fd-limit checks."""
