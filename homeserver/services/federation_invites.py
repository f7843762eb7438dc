"""Invites across servers.

Inbound (``PUT /_matrix/federation/v2/invite``, and v1): the inviting server asks us to
countersign an invite of one of our users. We check it, sign it, and -- when no local user is
in the room, so the event will not reach us through the room -- keep it as an out-of-band
membership with the stripped room state the inviter sent (``invite_room_state``): /sync shows
it under ``invite``.

Outbound: an invite of a remote user is built in the room's queue as usual, then sent to the
invitee's server for countersigning before it is persisted (``RoomService.remote_inviter``).

Answering an out-of-band invite: a join goes through ``FederationRooms.join_remote`` with the
inviter's server first; a rejection is a make_leave/send_leave through the inviter's server,
or, when no server can be reached, a leave made only here, so that the invite goes away.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from federation.builder import build_event, membership_from_template
from federation.events import Event, JsonDict
from federation.identifiers import InvalidIdentifier, get_domain
from federation.pdu_checks import PduRejected
from federation.redaction import redact
from federation.room_versions import (
    KNOWN_ROOM_VERSIONS,
    RoomVersion,
    get_room_version,
)
from federation.signing import SignatureError, sign_event, verify_json_signatures
from federation.transport.client import FederationClientError, HttpResponseError
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.events import RoomView
from homeserver.services.federation_policy import DestinationBlocked
from homeserver.storage.events import EVENTS_STREAM
from homeserver.storage.out_of_band import OutOfBandMembership, OutOfBandStore

if TYPE_CHECKING:
    from homeserver.services.federation_in import FederationRooms
    from homeserver.services.registry import Services

logger = logging.getLogger(__name__)

MEMBER = "m.room.member"
MAX_STRIPPED = 50
# The room's queue waits for the invitee's server: not for long.
INVITE_TIMEOUT_S = 20.0
# What an invitee is shown of the room (as Synapse's room_prejoin_state).
STRIPPED_TYPES = ("m.room.create", "m.room.name", "m.room.avatar", "m.room.topic",
                  "m.room.join_rules", "m.room.canonical_alias", "m.room.encryption")


def q(value: str) -> str:
    return quote(value, safe="")


def stripped(event: Event) -> JsonDict:
    return {"type": event.type, "state_key": event.state_key, "sender": event.sender,
            "content": event.content}


def clean_stripped_state(raw: Any) -> list[JsonDict]:
    """The well-formed entries of a peer's ``invite_room_state`` (at most 50)."""
    if not isinstance(raw, list):
        return []
    out = []
    for e in raw[:MAX_STRIPPED]:
        if (isinstance(e, dict) and isinstance(e.get("type"), str)
                and isinstance(e.get("state_key"), str) and isinstance(e.get("sender"), str)
                and isinstance(e.get("content"), dict)):
            out.append({k: e[k] for k in ("type", "state_key", "sender", "content")})
    return out


class FederationInvites:
    def __init__(self, s: Services, rooms: FederationRooms) -> None:
        self.s = s
        self.rooms = rooms
        self.server_name = s.config.server_name
        self.store = OutOfBandStore(s.db)
        s.rooms.remote_inviter = self.countersign
        s.sync.out_of_band = self.store

    # == inbound =============================================================================
    async def on_invite(self, origin: str, room_id: str, event_id: str, pdu: Any,
                        room_version: str, invite_room_state: Any) -> JsonDict:
        """Check, countersign and (for a room we are not in) keep an invite of a local
        user; returns the signed event."""
        if room_version not in KNOWN_ROOM_VERSIONS:
            raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION",
                              f"Room version {room_version} is not supported",
                              room_version=room_version)
        rv = get_room_version(room_version)
        await self.s.rooms.check_not_blocked(room_id)
        known = await self.rooms.room_version(room_id)
        if known is not None:
            if known is not rv:
                raise MatrixError(400, Codes.BAD_JSON,
                                  f"{room_id} is of room version {known.identifier}")
            await self.rooms.check_acl(room_id, origin)
        if not isinstance(pdu, dict):
            raise MatrixError(400, Codes.BAD_JSON, "event must be an object")
        try:
            event = await self.rooms.check_pdu(pdu, rv)
        except PduRejected as e:
            raise MatrixError(400, Codes.BAD_JSON, f"Invalid invite event: {e.reason}") from None
        if event.event_id != event_id or event.room_id != room_id:
            raise MatrixError(400, Codes.BAD_JSON, "The event does not match the request path")
        if event.type != MEMBER or event.membership != "invite" or event.state_key is None:
            raise MatrixError(400, Codes.BAD_JSON, "Not an invite event")
        if event.pdu_json() != pdu:
            # The content hash did not match (check_pdu redacted it).
            raise MatrixError(400, Codes.BAD_JSON, "The invite's content hash is wrong")
        self.rooms._check_user_origin(origin, event.sender)
        invitee = event.state_key
        if not self.rooms._is_local(invitee):
            raise MatrixError(400, Codes.INVALID_PARAM, f"{invitee} is not a user of this server")
        user = await self.s.users.get(invitee)
        if user is None or user.deactivated:
            raise MatrixError(404, Codes.NOT_FOUND, f"Unknown user {invitee}")
        signed = Event(sign_event(event.pdu_json(), rv, self.s.pipeline.signing_key,
                                  self.server_name), rv)
        if known is None or not await self.rooms._has_local_members(room_id):
            state = [e for e in clean_stripped_state(invite_room_state)
                     if not (e["type"] == MEMBER and e["state_key"] == invitee)]
            position = await self.store.add(signed, [*state, stripped(signed)],
                                             self.s.clock.time_ms())
            self._notify(position, invitee)
        return signed.pdu_json()

    def _notify(self, position: int, user_id: str) -> None:
        self.s.pipeline.notifier.notify(EVENTS_STREAM, position, rooms=[], users=[user_id])

    # == outbound ============================================================================
    async def countersign(self, event: Event, view: RoomView) -> Event:
        """Our invite of a remote user, signed by the invitee's server too (v2 /invite).
        ``view``: the room state the invite follows (for ``invite_room_state``)."""
        assert event.state_key is not None
        server = get_domain(event.state_key)
        rv = event.room_version
        state = await view.state_events(
            [*((t, "") for t in STRIPPED_TYPES), (MEMBER, event.sender)])
        # Full PDUs, as spec v1.16 requires (Synapse warns about stripped ones); a receiver
        # shows them stripped.
        room_state = [e.pdu_json() for (t, _), e in state.items() if t in STRIPPED_TYPES]
        sender_member = state.get((MEMBER, event.sender))
        if sender_member is not None:
            room_state.append(sender_member.pdu_json())
        try:
            answer = await self.s.federation_client.put_json(
                server, f"/_matrix/federation/v2/invite/{q(event.room_id)}/{q(event.event_id)}",
                {"room_version": rv.identifier, "event": event.pdu_json(),
                 "invite_room_state": room_state}, timeout_s=INVITE_TIMEOUT_S)
        except HttpResponseError as e:
            status = e.status if 400 <= e.status < 500 else 502
            raise MatrixError(status if status != 401 else 403, e.errcode or Codes.UNKNOWN,
                              f"{server} refused the invite: {e.error or e}") from None
        except DestinationBlocked:
            raise MatrixError(403, Codes.FORBIDDEN,
                              f"This server does not federate with {server}") from None
        except FederationClientError as e:
            raise MatrixError(502, Codes.UNKNOWN, f"Cannot reach {server}: {e}") from None
        theirs = answer.get("event") if isinstance(answer, dict) else None
        if not isinstance(theirs, dict):
            raise MatrixError(502, Codes.UNKNOWN, f"{server} answered the invite wrongly")
        ours = event.pdu_json()
        strip = ("signatures", "unsigned")
        if ({k: v for k, v in theirs.items() if k not in strip}
                != {k: v for k, v in ours.items() if k not in strip}):
            raise MatrixError(502, Codes.UNKNOWN, f"{server} changed the invite event")
        their_sigs = (theirs.get("signatures") or {}).get(server)
        if not isinstance(their_sigs, dict):
            raise MatrixError(502, Codes.UNKNOWN, f"{server} did not sign the invite")
        signatures = {**ours.get("signatures", {}), server: their_sigs}
        signed = dict(ours, signatures=signatures)
        try:
            lookup = await self.s.keyring.lookup_for({server: list(their_sigs)})
            verify_json_signatures(redact(signed, rv), server, lookup)
        except SignatureError as e:
            raise MatrixError(502, Codes.UNKNOWN,
                              f"{server}'s signature of the invite is bad: {e}") from None
        return Event(signed, rv, event.event_id)

    async def on_retraction(self, origin: str, pdu: JsonDict) -> tuple[str, JsonDict] | None:
        """A PDU (from /send) that withdraws an out-of-band invite of a local user -- the
        inviter's kick or ban, in a room we are not in: stored as the user's out-of-band
        membership. Returns (event ID, PDU result), or None for any other PDU."""
        user_id, room_id = pdu.get("state_key"), pdu["room_id"]
        content = pdu.get("content")
        if (pdu.get("type") != MEMBER or not isinstance(user_id, str)
                or not isinstance(content, dict)
                or content.get("membership") not in ("leave", "ban")
                or not self.rooms._is_local(user_id)):
            return None
        # A resident refusing a knock (its kick) is stored the same way.
        if await self.rooms._has_local_members(room_id):
            return None
        invite = await self.pending(room_id, user_id, ("invite", "knock"))
        if invite is None or origin not in self._retractors(invite):
            return None  # only the inviter's server (or a knock's resident) may withdraw it
        rv = invite.event.room_version
        try:
            event = await self.rooms.check_pdu(pdu, rv)
            self.rooms._check_user_origin(origin, event.sender)
        except (PduRejected, MatrixError) as e:
            event_id = pdu.get("event_id") if isinstance(pdu.get("event_id"), str) else None
            try:
                event_id = event_id or Event(dict(pdu), rv).event_id
            except Exception:
                return None
            return event_id, {"error": e.reason if isinstance(e, PduRejected) else e.message}
        if event.sender == user_id:
            return None  # the user's own leave: made here, or through us
        position = await self.store.add(event, [], self.s.clock.time_ms())
        self._notify(position, user_id)
        return event.event_id, {}

    def _retractors(self, invite: OutOfBandMembership) -> list[str]:
        """The servers that may withdraw an out-of-band invite (the inviter's) or knock (the
        residents it went through, else the room ID's server)."""
        senders = ([invite.sender] if invite.membership == "invite"
                   else [e.get("sender") for e in invite.stripped_state if isinstance(e, dict)])
        servers = []
        for sender in senders:
            try:
                if isinstance(sender, str):
                    servers.append(get_domain(sender))
            except InvalidIdentifier:
                continue
        if invite.membership != "invite":
            servers += self.rooms.room_servers(invite.room_id)
        return [x for x in servers if x != self.server_name]

    # == answering an out-of-band invite =====================================================
    async def pending(self, room_id: str, user_id: str, memberships: tuple[str, ...] = ("invite",)
                      ) -> OutOfBandMembership | None:
        """The user's out-of-band invite to ``room_id`` (or other ``memberships``: a knock,
        services/federation_knocks), if it is still open."""
        found = await self.store.latest(user_id, room_id)
        if not found or found[0].membership not in memberships:
            return None
        member = await self.s.state_store.membership(room_id, user_id)
        if member is not None:
            stored = await self.s.events.get_event(member.event_id)
            if stored is not None and stored.stream_ordering > found[0].stream_ordering:
                return None
        return found[0]

    async def inviter_servers(self, room_id: str, user_id: str) -> list[str]:
        invite = await self.pending(room_id, user_id)
        if invite is None:
            return []
        try:
            return [get_domain(invite.sender)]
        except InvalidIdentifier:
            return []

    async def reject(self, room_id: str, user_id: str, reason: str | None) -> str:
        """Reject an out-of-band invite: through the inviting server, else only here."""
        invite = await self.pending(room_id, user_id)
        if invite is None:
            raise MatrixError(403, Codes.FORBIDDEN, "You are not invited to this room")
        rv = invite.event.room_version
        content: JsonDict = {"membership": "leave"}
        if reason is not None:
            content["reason"] = reason
        servers = [*await self.inviter_servers(room_id, user_id),
                   *self.rooms.room_servers(room_id)]
        leave: Event | None = None
        for server in dict.fromkeys(servers):
            if server == self.server_name:
                continue
            try:
                leave = await self._leave_via(server, room_id, user_id, rv, content)
                break
            except (FederationClientError, PduRejected, ValueError, KeyError, TypeError) as e:
                logger.info("rejecting the invite to %s via %s failed: %s", room_id, server, e)
        if leave is None:
            # Nobody to tell: a leave only this server knows, after the invite.
            leave = build_event(
                room_version=rv, event_type=MEMBER, sender=user_id, content=content,
                room_id=room_id, prev_events=[invite.event],
                current_state={(MEMBER, user_id): invite.event},
                origin_server_ts=self.s.clock.time_ms(),
                signing_key=self.s.pipeline.signing_key, server_name=self.server_name,
                state_key=user_id)
        position = await self.store.add(leave, [], self.s.clock.time_ms())
        self._notify(position, user_id)
        return leave.event_id

    async def _leave_via(self, server: str, room_id: str, user_id: str, rv: RoomVersion,
                         content: JsonDict) -> Event:
        client = self.s.federation_client
        made = await client.get_json(
            server, f"/_matrix/federation/v1/make_leave/{q(room_id)}/{q(user_id)}")
        if not isinstance(made, dict) or not isinstance(made.get("event"), dict):
            raise ValueError("make_leave answered without an event template")
        if made.get("room_version", rv.identifier) != rv.identifier:
            raise ValueError("make_leave answered another room version")
        leave = membership_from_template(
            room_version=rv, template=made["event"], room_id=room_id, user_id=user_id,
            content=content, origin_server_ts=self.s.clock.time_ms(),
            signing_key=self.s.pipeline.signing_key, server_name=self.server_name)
        pdu = leave.pdu_json()
        await client.put_json(
            server, f"/_matrix/federation/v2/send_leave/{q(room_id)}/{q(leave.event_id)}", pdu)
        return leave
