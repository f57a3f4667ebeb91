"""Sending a plan's fragments to backends and gathering their replies into one reply slot.

A `Gather` owns one child slot per fragment; when the last child is answered it merges the raw
replies (routing.merge_replies) into the parent slot, which sits in the client's ordered queue.
"""

from __future__ import annotations

from proxy.codec.resp import decode_reply, encode_request
from proxy.commands.info import sum_section
from proxy.commands.local import encode_info, info_body, sum_keyspace
from proxy.commands.session import ServerView, proto_of
from proxy.commands.spec import Merge
from proxy.net.route import RouteTable
from proxy.net.slot import ReplyOwner, Slot
from proxy.routing.merge import merge_replies
from proxy.routing.plan import Plan


class Gather(ReplyOwner):
    __slots__ = ("children", "parent", "plan", "resp3")

    def __init__(self, parent: Slot, plan: Plan, resp3: bool) -> None:
        super().__init__()
        self.parent = parent
        self.plan = plan
        self.resp3 = resp3
        self.children = [Slot(self, None, parent.start) for _ in plan.fragments]

    def flush(self) -> None:
        self.dirty = False
        if self.parent.reply is not None:
            return
        replies = [c.reply for c in self.children if c.reply is not None]
        if len(replies) < len(self.children):
            return
        self.parent.answer(merge_replies(self.plan, replies, self.resp3))


def send_plan(plan: Plan, routes: RouteTable, slot: Slot, lane: int, client_id: int) -> None:
    """Send every fragment of `plan` on `lane` (the client's RESP version and database); its
    (merged) reply lands in `slot`."""
    if plan.error is not None:
        slot.reply = plan.error
        return
    backends = routes.backends
    fragments = plan.fragments
    if len(fragments) == 1 and plan.merge is None:
        fragment = fragments[0]
        backends[fragment.addr].send(lane, client_id, encode_request(fragment.args), slot)
        return
    resp3 = proto_of(lane) == 3
    gather = Gather(slot, plan, resp3)
    alone = plan.merge is Merge.KILL  # not queued behind the script it is meant to stop
    for fragment, child in zip(fragments, gather.children, strict=True):
        if alone:
            backends[fragment.addr].send_alone(fragment.args, child)
        else:
            backends[fragment.addr].send(lane, client_id, encode_request(fragment.args), child)
    if all(c.reply is not None for c in gather.children):
        # Every backend was down: answered already; merge now (the client flushes after).
        gather.parent.reply = merge_replies(
            plan,
            [c.reply for c in gather.children],  # type: ignore[misc]
            resp3,
        )


class InfoGather(ReplyOwner):
    """INFO: the proxy's own sections, then `# Memory`, `# Stats` and `# Keyspace` summed over
    the route backends (commands/info.py), as many of them as the client asked for."""

    __slots__ = ("args", "children", "parent", "proto", "sections", "view")

    def __init__(
        self,
        parent: Slot,
        args: list[bytes],
        view: ServerView,
        proto: int,
        n: int,
        sections: list[str],
    ):
        super().__init__()
        self.parent = parent
        self.args = args
        self.view = view
        self.proto = proto
        self.sections = sections
        self.children = [Slot(self, None, parent.start) for _ in range(n)]

    def flush(self) -> None:
        self.dirty = False
        if self.parent.reply is not None or any(c.reply is None for c in self.children):
            return
        texts = []
        for child in self.children:
            value = decode_reply(child.reply or b"")
            if isinstance(value, bytes):
                texts.append(value)
        summed = b"\r\n".join(
            filter(None, (sum_section(s, texts) for s in self.sections if s != "keyspace"))
        )
        if "keyspace" in self.sections:
            summed += (b"\r\n" if summed else b"") + sum_keyspace(texts)
        body = info_body(self.args, self.view, summed)
        self.parent.answer(encode_info(body, self.proto))


def send_info(
    args: list[bytes],
    routes: RouteTable,
    slot: Slot,
    view: ServerView,
    proto: int,
    sections: list[str],
) -> None:
    addrs = list(dict.fromkeys(routes.read.addrs))  # every pool keys are routed to
    gather = InfoGather(slot, args, view, proto, len(addrs), sections)
    payload = encode_request([b"INFO", *(s.encode() for s in sections)])
    for addr, child in zip(addrs, gather.children, strict=True):
        routes.backends[addr].send(2, 0, payload, child)
    gather.flush()
