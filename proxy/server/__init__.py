"""The composition root and its lifecycle: the proxy server, reloads, admin HTTP, ACL and
fd-limit checks."""
