"""Stream entries → the frames each viewer receives, with one set of DB reads per batch.

Streams hold ids only; the message a `message.new` / `message.updated` frame carries is loaded,
decrypted and rendered here exactly as `GET /v1/messages/{mid}` renders it for that viewer.
A wake-up for a 1,000-member conversation renders one message for 1,000 users: the messages,
their conversations' members and the reactions are read once for the whole batch
(`domain.live.render_batch`), and viewers who would get identical JSON share one rendering
(see `_view_key`). The frame's envelope carries the viewer's own entry id, but one fan-out's
entries mostly share theirs, so viewers alike mostly share the whole frame too: per viewer
there is a membership lookup and two dict lookups.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy.orm import Session

from core.services import Services
from domain import live
from domain.messages import can_see
from domain.principals import MODERATOR_ROLES, Principal
from domain.render import render_message
from models import Message, Participant
from web.live import protocol
from web.live.protocol import StreamId
from web.live.streams import Entry

logger = logging.getLogger(__name__)

MESSAGE_EVENTS = frozenset({"message.new", "message.updated"})
# Fan-out appends a held or rejected message's message.updated before the transaction that
# records the verdict commits: a row still pending behind a message.updated this young is a
# verdict in flight, and its viewer waits for it rather than get the message as pending.
IN_FLIGHT_MS = 2000


class Outgoing(NamedTuple):
    """What one viewer gets for one entry: a frame, or None when the entry is not for them
    (the cursor still moves past it). `delivered` is (conversation, seq) for message.new.
    `later`: the database does not show the event yet; send nothing from here on and render
    again shortly (the cursor stays before it)."""

    sid: StreamId
    frame: str | None
    delivered: tuple[str, int] | None = None
    later: bool = False


Viewer = tuple[str, frozenset[str]]  # (user id, token roles): roles change what a render shows


def render(
    svc: Services,
    read_session: Callable[[], Session],
    wants: Mapping[Viewer, Sequence[Entry]],
) -> dict[Viewer, list[Outgoing]]:
    """Frames for every viewer's entries, in the entries' order."""
    mids = {
        str(e.data.get("message_id"))
        for entries in wants.values()
        for e in entries
        if e.type in MESSAGE_EVENTS and e.data.get("message_id")
    }
    if not mids:
        return {v: [_passthrough(e) for e in entries] for v, entries in wants.items()}
    users = {user for user, _ in wants}
    with read_session() as s:  # the batch's objects live as long as the session
        batch = live.render_batch(s, mids, users)
        views = _Views(svc, batch.messages, batch.members, batch.shared, batch.mine)
        return {v: [views.outgoing(v, e) for e in entries] for v, entries in wants.items()}


def _passthrough(e: Entry) -> Outgoing:
    return Outgoing(e.sid, protocol.durable(e.type, e.id, protocol.dumps(e.data)))


class _Views:
    """Renders messages per viewer, sharing one JSON encoding among identical views."""

    def __init__(
        self,
        svc: Services,
        messages: Mapping[str, Message],
        members: Mapping[str, list[Participant]],
        shared: Mapping[str, list[dict[str, Any]]],
        mine: Mapping[tuple[str, str], set[str]],
    ) -> None:
        self.svc = svc
        self.facts = {mid: _Facts.of(m) for mid, m in messages.items()}
        self.members = members
        # (conversation, user) → (their membership, whether they moderate it): read once here,
        # not once per viewer (an ORM attribute costs ~300 ns)
        self.parts = {
            (p.conversation_id, p.user_id): (p, p.role == "moderator")
            for ps in members.values()
            for p in ps
        }
        self.shared = shared
        self.mine = mine
        # view key → the rendered data, or None when such viewers may not see the message
        self.cache: dict[tuple[Any, ...], str | None] = {}
        self.outgoing_of: dict[tuple[Any, ...], Outgoing] = {}  # (entry id, type, view key)
        self.moderators: dict[frozenset[str], bool] = {}
        self.now_ms = time.time() * 1000  # stream ids start with Redis's clock in ms

    def outgoing(self, viewer: Viewer, e: Entry) -> Outgoing:
        if e.type not in MESSAGE_EVENTS:
            return _passthrough(e)
        msg = self.facts.get(str(e.data.get("message_id")))
        if msg is None:  # purged or erased since: nothing to show
            return Outgoing(e.sid, None)
        user, roles = viewer
        moderator = self.moderators.get(roles)
        if moderator is None:
            moderator = self.moderators[roles] = bool(roles & MODERATOR_ROLES)
        part, moderates = self.parts.get((msg.conversation_id, user), _NO_PART)
        if part is None and not moderator:
            return Outgoing(e.sid, None)  # GET /v1/messages/{mid} would answer 404
        # Fan-out appends message.new just before committing state=delivered: a still-pending
        # row behind a message.new is a delivered message whose commit is in flight.
        new = e.type == "message.new"
        forced = new and msg.pending
        if msg.pending and not forced and abs(self.now_ms - e.sid[0]) < IN_FLIGHT_MS:
            return Outgoing(e.sid, None, later=True)
        mine = self.mine.get((user, msg.id))
        emojis = frozenset(mine) if mine else _NONE
        key = (msg.id, forced, _view_key(msg.sender_id, user, moderator, moderates), emojis)
        # A fan-out's entries mostly share their id (appended in one script, in the same ms):
        # viewers alike then get the very same Outgoing, frame included, which the socket
        # layer encodes once (web/live/connection.text_frame).
        shared = self.outgoing_of.get((e.id, e.type, key))
        if shared is not None:
            return shared
        if key in self.cache:
            data_json = self.cache[key]
        else:
            data_json = self.cache[key] = self._render(msg.row, viewer, part, forced, emojis)
        if data_json is None:
            out = Outgoing(e.sid, None)
        else:
            delivered = (msg.conversation_id, msg.seq) if new else None
            out = Outgoing(e.sid, protocol.durable(e.type, e.id, data_json), delivered)
        self.outgoing_of[(e.id, e.type, key)] = out
        return out

    def _render(
        self,
        msg: Message,
        viewer: Viewer,
        part: Participant | None,
        forced: bool,
        emojis: frozenset[str],
    ) -> str | None:
        """The data of `msg` as `viewer` (and everyone with the same view key) sees it, or
        None when they may not see it."""
        who = Principal(user_id=viewer[0], roles=viewer[1])
        if not forced and not can_see(msg, who, part):
            return None  # held/rejected: only its sender and moderators
        try:
            data = render_message(
                self.svc,
                msg,
                who,
                part,
                self.members.get(msg.conversation_id, []),
                {msg.id: self._reactions(msg.id, emojis)},
            )
        except Exception:  # one unreadable message must not stop everyone's batch
            logger.exception("cannot render a message; event skipped", extra={"message_id": msg.id})
            return None
        if forced:
            data["state"] = "delivered"
        return protocol.dumps(data)

    def _reactions(self, mid: str, emojis: frozenset[str]) -> list[dict[str, Any]]:
        base = self.shared.get(mid, [])
        if not emojis:
            return base
        return [{**r, "me": r["emoji"] in emojis} for r in base]


_NONE: frozenset[str] = frozenset()
_NO_PART: tuple[None, bool] = (None, False)


class _Facts(NamedTuple):
    """What each viewer's checks read of a message, taken off the ORM object once per batch:
    an ORM attribute costs ~300 ns, and a 1,000-member render would read each 1,000 times."""

    row: Message
    id: str
    conversation_id: str
    seq: int
    sender_id: str | None
    pending: bool

    @classmethod
    def of(cls, m: Message) -> _Facts:
        return cls(m, m.id, m.conversation_id, m.seq, m.sender_id, m.state == "pending")


def _view_key(sender_id: str | None, user: str, moderator: bool, moderates: bool) -> Any:
    """Everything besides the message and the viewer's own reactions that render_message's
    output and can_see's verdict depend on: the sender sees their own fields (status,
    client_msg_id), privileged viewers (moderators) see the moderation verdict and held
    messages, everyone else sees the same thing. Keep in step with domain/render.py and
    domain.messages.can_see."""
    if sender_id is not None and sender_id == user:
        return ("sender", user, moderator)
    privileged = moderator or moderates
    return "privileged" if privileged else "plain"
