"""Helpers shared by the tests and the benchmarks, one module per role; import from the module.

processes  real redis-server / nutcracker processes on free ports, free_port, wait_until
proxy      a ProxyServer in-process on its own event loop (ProxyThread, proxy_for, running_proxy)
loadgen    a concurrent write load checked against an exact model, for changes under traffic
wire       a tiny RESP2/RESP3 client of its own, for byte-for-byte comparisons
"""
