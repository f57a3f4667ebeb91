"""How much of the keyspace changes owner between two rings: exact ring arithmetic.

Ketama: the merged continua of both rings, arc by arc. Modula: the residues of the total weights,
enumerated exactly when their period is small enough, else evenly spaced hashes. Pure.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Final

from proxy.routing.ring import RING_SIZE, Ring, ketama_points
from proxy.routing.topology import PoolTopology

MODULA_EXACT_LIMIT: Final = 1 << 22  # residues (lcm of total weights) enumerated exactly
SAMPLE_POINTS: Final = 1 << 20  # evenly spaced hashes when the exact count is too large


def share_method(source: PoolTopology, target: PoolTopology) -> str:
    """How moved_shares computes its answer for these two pools:

    - "exact": ring arithmetic over the shared 2^32 hash space (same hash function and tag);
      ketama arcs are merged, modula residues counted modulo the lcm of the total weights;
    - "uniform sample": the same, but on 2^20 evenly spaced hashes (huge modula weights);
    - "independent": hash functions or tags differ, so placements are independent: the share
      of (a, b) is share(a) * share(b) - an expectation, not a count.
    """
    a, b = source.ring, target.ring
    if a.hash_name != b.hash_name or a.hash_tag != b.hash_tag:
        return "independent"
    if a.distribution == b.distribution == "ketama":
        return "exact"
    if _residue_period(a, b) * _arcs(a, b) <= MODULA_EXACT_LIMIT:
        return "exact"
    return "uniform sample"


def moved_shares(source: PoolTopology, target: PoolTopology) -> dict[tuple[str, str], float]:
    """Fraction of the hash space whose owner address changes, per (source addr, target addr).

    Pairs with the same address (a reused server) are left out: those keys do not move.
    """
    method = share_method(source, target)
    if method == "independent":
        counts = _independent(source.ring, target.ring)
        scale = 1.0
    elif method == "exact":
        counts = _exact_counts(source.ring, target.ring)
        scale = 1 / RING_SIZE
    else:
        counts = _sampled_counts(source.ring, target.ring)
        scale = 1 / SAMPLE_POINTS
    moved: dict[tuple[str, str], float] = {}
    for (i, j), count in sorted(counts.items()):
        pair = (source.addrs[i], target.addrs[j])
        if pair[0] != pair[1] and count:
            moved[pair] = moved.get(pair, 0.0) + count * scale
    return moved


def _independent(a: Ring, b: Ring) -> dict[tuple[int, int], float]:
    sa, sb = a.shares(), b.shares()
    return {(i, j): x * y for i, x in enumerate(sa) for j, y in enumerate(sb)}


def _ketama_arcs(ring: Ring) -> list[int]:
    return ketama_points(ring.labels, ring.weights)[0] if ring.distribution == "ketama" else []


def _arcs(a: Ring, b: Ring) -> int:
    return len(set(_ketama_arcs(a)) | set(_ketama_arcs(b))) + 1


def _residue_period(a: Ring, b: Ring) -> int:
    totals = [sum(r.weights) for r in (a, b) if r.distribution == "modula"]
    return math.lcm(*totals) if totals else 1


def _exact_counts(a: Ring, b: Ring) -> dict[tuple[int, int], float]:
    """Hashes per (owner in a, owner in b), counted exactly.

    The merged ketama points cut [0, 2^32) into arcs where both ketama owners are constant (a
    ring's owner of h is its first point >= h, so it is the owner of the arc's upper end); inside
    an arc a modula owner depends on h mod its total weight only, so the count per residue of the
    lcm period is a closed form.
    """
    bounds = sorted(set(_ketama_arcs(a)) | set(_ketama_arcs(b)) | {RING_SIZE - 1})
    period = _residue_period(a, b)
    counts: dict[tuple[int, int], float] = {}
    low = 0
    for high in bounds:  # the arc [low, high]
        if period == 1:
            pair = (a.node_for_hash(high), b.node_for_hash(high))
            counts[pair] = counts.get(pair, 0) + high - low + 1
        else:
            for r in range(period):
                n = _count_residue(high, r, period) - _count_residue(low - 1, r, period)
                pair = (_owner(a, high, r), _owner(b, high, r))
                counts[pair] = counts.get(pair, 0) + n
        low = high + 1
    return counts


def _owner(ring: Ring, arc_end: int, residue: int) -> int:
    """Owner of a hash in an arc ending at arc_end with h % period == residue (modula: the
    period is a multiple of the ring's total weight, so h % total == residue % total)."""
    return ring.node_for_hash(arc_end if ring.distribution == "ketama" else residue)


def _count_residue(upto: int, residue: int, period: int) -> int:
    """How many h in [0, upto] have h % period == residue."""
    if upto < residue:
        return 0
    return (upto - residue) // period + 1


def _sampled_counts(a: Ring, b: Ring) -> dict[tuple[int, int], float]:
    step = RING_SIZE // SAMPLE_POINTS
    offset = random.Random(0).randrange(step)  # fixed, so the answer is reproducible
    counts: dict[tuple[int, int], float] = {}
    locate_a: Callable[[int], int] = a.node_for_hash
    locate_b: Callable[[int], int] = b.node_for_hash
    for h in range(offset, RING_SIZE, step):
        pair = (locate_a(h), locate_b(h))
        counts[pair] = counts.get(pair, 0) + 1
    return counts
