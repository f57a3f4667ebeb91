"""The client limit sized to the file descriptor limit, as Redis sizes maxclients.

A client flood must never take the descriptors that backend connections and health checks need
(else every backend would look down): the soft RLIMIT_NOFILE is raised toward the hard limit when
it is too low, and clients get what is left after a reserve for everything else the process
opens. Recomputed on reload, since pools (and so backend connections) may change.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

log = logging.getLogger("shardproxy.fdlimit")

# Per backend, besides its shared connections: health check, reconnect probe, busy check,
# SCRIPT/FUNCTION KILL, and a busy connection draining next to its replacement, per protocol.
PER_BACKEND_EXTRA_FDS = 6
LISTEN_FDS = 4  # client and admin listeners (one per address family)
ADMIN_FDS = 16  # admin HTTP connections (scrapes, /status, reload)
PROCESS_FDS = 16  # stdio, log files, epoll, the loop's wake-up and signal fds, config reads
MARGIN_FDS = 32  # Redis's CONFIG_MIN_RESERVED_FDS


@dataclass(frozen=True)
class ClientLimit:
    max_clients: int  # clients accepted at most
    nofile: int  # the soft RLIMIT_NOFILE in force
    reserve: int  # descriptors kept for everything but clients


def reserve_fds(backends: int, connections: int) -> int:
    """Descriptors kept for everything but clients: `backends` backends, each with
    `connections` shared connections per protocol (RESP2 and RESP3)."""
    per_backend = 2 * connections + PER_BACKEND_EXTRA_FDS
    return backends * per_backend + LISTEN_FDS + ADMIN_FDS + PROCESS_FDS + MARGIN_FDS


def raise_nofile(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE toward `wanted` (at most the hard limit); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return wanted if soft == resource.RLIM_INFINITY else soft
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # e.g. above fs.nr_open
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, exc)
            return soft
        log.info("open files limit raised from %d to %d", soft, target)
        return target
    return soft


def size_clients(max_connections: int, backends: int, connections: int) -> ClientLimit:
    """min(max_connections, nofile - reserve), after raising nofile as far as allowed."""
    reserve = reserve_fds(backends, connections)
    nofile = raise_nofile(max_connections + reserve)
    return ClientLimit(max(1, min(max_connections, nofile - reserve)), nofile, reserve)


def log_lowered(limit: ClientLimit, max_connections: int) -> None:
    if limit.max_clients < max_connections:
        log.warning(
            "client.max_connections lowered to %d: the open files limit is %d and %d are kept "
            "for backend, health check and admin connections (raise `ulimit -n` to at least %d "
            "for %d clients)",
            limit.max_clients,
            limit.nofile,
            limit.reserve,
            max_connections + limit.reserve,
            max_connections,
        )
