"""Reply slots, and the one base class of everything that waits for them.

A Slot is one expected reply: set once (raw RESP bytes), then its owner is flushed. Owners are
client connections (replies leave in request order), gathers (fan-out merges), handshakes,
futures (background jobs), double-write sinks and streams. ReplyOwner keeps the one
dirty-flag-and-flush step: an owner is flushed once however many of its slots one backend read
answered (BackendConnection._deliver marks them all, then flushes each owner once).
"""

from __future__ import annotations

from typing import Final

from proxy.net.metrics import CommandStats

# The reply of a slot whose owner kept the big reply's buffer (keep_view): a bulk string by its
# first byte, never a reply a backend sends, told by identity (an object of its own, not a
# literal the compiler could share).
VIEW_MARK: Final = bytes(bytearray(b"$-2\r\n"))


class ReplyOwner:
    """Whoever waits for reply slots. `dirty` is set while a flush is due (see touch)."""

    __slots__ = ("dirty",)
    # True: the owner only writes replies out, so it may get a big reply as a memoryview of the
    # read it came in (ReplyScanner.views, pure build); every other owner gets bytes.
    takes_views = False

    def __init__(self) -> None:
        self.dirty = False

    def flush(self) -> None:
        raise NotImplementedError

    def keep_view(self, slot: Slot, reply: bytearray) -> bool:
        """A big reply to `slot`, read into a buffer of its own: an owner that only writes it
        out keeps the buffer and gets VIEW_MARK as the slot's reply (True); any other owner
        (False) gets a copy as bytes."""
        return False

    def touch(self) -> None:
        """A slot of this owner was answered outside a backend read: flush it now, once."""
        if not self.dirty:
            self.dirty = True
            self.flush()


class Slot:
    """One expected reply. `reply` is set (raw RESP bytes) once, then the owner is flushed.

    `stats` and `start` (perf_counter seconds at dispatch) feed the latency histograms; slots
    the proxy answers itself, and a gather's children, carry `stats` None. `key` is set only
    while big keys are watched (net/hotkeys.py), to name the key of a big reply: read it with
    getattr(slot, "key", None).
    """

    __slots__ = ("key", "owner", "reply", "start", "stats")
    key: bytes

    def __init__(self, owner: ReplyOwner, stats: CommandStats | None, start: float) -> None:
        self.owner = owner
        self.reply: bytes | None = None
        self.stats = stats
        self.start = start

    def answer(self, reply: bytes) -> None:
        """Set the reply (outside a backend read) and flush the owner."""
        self.reply = reply
        self.owner.touch()
