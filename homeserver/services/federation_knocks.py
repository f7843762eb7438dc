"""Knocking over federation (``make_knock`` / ``send_knock``).

Resident side: a user of another server asks to be let into a room with ``join_rule`` knock
(or knock_restricted) that one of our users is in. The knock goes through the same checks as
a leave (our template, the peer's signed event checked and received by the pipeline, whose
auth rules refuse a knock the join rules do not allow), is passed on to the room's other
servers, and the answer carries the room's state for the knocker's client to show (full
PDUs, spec v1.16).

Knocking side: a local user knocks on a room this server is not in through the servers the
client named (or the alias's, or the room ID's). The signed knock is kept as an out-of-band
membership (as a remote invite is) with the stripped ``knock_room_state``, so /sync shows it
in ``rooms.knock``; an invite that answers it arrives as an ordinary remote invite. Leaving
withdraws the knock through the same servers (make_leave / send_leave).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from federation.builder import membership_from_template
from federation.events import JsonDict
from federation.identifiers import InvalidIdentifier, get_domain
from federation.pdu_checks import PduRejected
from federation.room_versions import KNOWN_ROOM_VERSIONS, get_room_version
from federation.transport.client import FederationClientError, HttpResponseError
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.federation_in import FederationRooms
from homeserver.services.federation_invites import STRIPPED_TYPES, clean_stripped_state
from homeserver.storage.events import EVENTS_STREAM
from homeserver.storage.out_of_band import OutOfBandMembership
from homeserver.storage.state import StateFilter

logger = logging.getLogger(__name__)

MEMBER = "m.room.member"


def q(value: str) -> str:
    return quote(value, safe="")


class FederationKnocks:
    def __init__(self, fed: FederationRooms) -> None:
        self.fed = fed
        self.s = fed.s

    async def make_knock(self, origin: str, room_id: str, user_id: str,
                         versions: Sequence[str]) -> JsonDict:
        fed = self.fed
        fed._check_user_origin(origin, user_id)
        rv = await fed.room_version(room_id)
        if rv is None or not await fed._has_local_members(room_id):
            raise MatrixError(404, Codes.NOT_FOUND, f"This server is not in room {room_id}")
        await fed.check_acl(room_id, origin)
        await self.s.rooms.check_not_blocked(room_id)
        if rv.identifier not in versions:
            raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION",
                              f"Room version {rv.identifier} is not supported by {origin}",
                              room_version=rv.identifier)
        if not rv.knock_join_rule:
            # The spec's (and Synapse's) answer for a room not set up for knocks.
            raise MatrixError(403, Codes.FORBIDDEN,
                              f"Room version {rv.identifier} does not support knocking")
        # Building the template authorises it: a room whose join rules refuse knocks (or
        # where the user is banned or already joined) answers 403 here.
        _, template = await self.s.pipeline.template(
            room_id, MEMBER, user_id, {"membership": "knock"}, user_id)
        return {"event": template, "room_version": rv.identifier}

    async def send_knock(self, origin: str, room_id: str, event_id: str,
                         pdu: JsonDict) -> JsonDict:
        event = await self.fed._accept_membership(origin, room_id, event_id, pdu, "knock")
        others = await self.fed.destinations(room_id) - {origin}
        if others:
            await self.s.federation_sender.send_pdu(others, event.pdu_json())
        ids = await self.s.pipeline.current_state_ids(
            room_id, StateFilter.from_keys([(t, "") for t in STRIPPED_TYPES]))
        found = await self.s.events.get_events(ids.values())
        return {"knock_room_state": [found[i].event.pdu_json() for i in ids.values()
                                     if i in found]}

    # == knocking side ========================================================================
    async def knock_remote(self, room_id: str, user_id: str, servers: Sequence[str],
                           content: Mapping[str, Any]) -> str:
        """Knock on a room this server is not in through one of ``servers``, in turn."""
        errors, refusals = [], []
        for server in dict.fromkeys(servers):
            if server == self.fed.server_name:
                continue
            try:
                return await self._knock_via(server, room_id, user_id, content)
            except (FederationClientError, PduRejected, ValueError, KeyError,
                    TypeError) as e:
                logger.info("knocking on %s via %s failed: %s", room_id, server, e)
                errors.append(f"{server}: {e}")
                if isinstance(e, HttpResponseError) and e.status in (400, 403):
                    # The resident's answer (not set up for knocks, banned, a room version
                    # we lack) is the client's.
                    refusals.append((e.status, e.errcode, f"{server}: {e.error or e}"))
        if refusals:
            status, errcode, _ = refusals[0]
            raise MatrixError(status, errcode or Codes.FORBIDDEN,
                              f"Cannot knock on {room_id}: "
                              + "; ".join(r[2] for r in refusals))
        raise MatrixError(404, Codes.NOT_FOUND,
                          f"No server could be reached to knock on {room_id}: "
                          + "; ".join(errors) if errors
                          else f"No server known to knock on {room_id} through")

    async def _knock_via(self, server: str, room_id: str, user_id: str,
                         content: Mapping[str, Any]) -> str:
        client = self.s.federation_client
        made = await client.get_json(
            server, f"/_matrix/federation/v1/make_knock/{q(room_id)}/{q(user_id)}",
            {"ver": sorted(KNOWN_ROOM_VERSIONS)})
        if not isinstance(made, dict) or not isinstance(made.get("event"), dict):
            raise ValueError("make_knock answered without an event template")
        rv = get_room_version(made["room_version"])
        if not rv.knock_join_rule:
            raise ValueError(f"room version {rv.identifier} has no knocking")
        knock = membership_from_template(
            room_version=rv, template=made["event"], room_id=room_id, user_id=user_id,
            content={**content, "membership": "knock"}, origin_server_ts=self.s.clock.time_ms(),
            signing_key=self.s.pipeline.signing_key, server_name=self.fed.server_name)
        pdu = knock.pdu_json()
        answer = await client.put_json(
            server, f"/_matrix/federation/v1/send_knock/{q(room_id)}/{q(knock.event_id)}",
            pdu)
        state = clean_stripped_state(
            answer.get("knock_room_state") if isinstance(answer, dict) else None)
        state = [e for e in state if not (e["type"] == MEMBER and e["state_key"] == user_id)]
        own = {"type": MEMBER, "state_key": user_id, "sender": user_id,
               "content": knock.content}
        store = self.fed.invites.store
        position = await store.add(knock, [*state, own], self.s.clock.time_ms())
        self.s.pipeline.notifier.notify(EVENTS_STREAM, position, rooms=[], users=[user_id])
        return knock.event_id

    async def pending(self, room_id: str, user_id: str) -> OutOfBandMembership | None:
        """The user's out-of-band knock on ``room_id``, if it is still their membership."""
        return await self.fed.invites.pending(room_id, user_id, ("knock",))

    async def withdraw(self, knock: OutOfBandMembership, servers: Sequence[str],
                       reason: str | None) -> None:
        """Leave after knocking: the leave goes to a resident (the room ID's server and the
        given ones); with none reachable, the knock stands there, so this is an error."""
        content: JsonDict = {"membership": "leave"}
        if reason is not None:
            content["reason"] = reason
        room_id, user_id = knock.room_id, knock.user_id
        rv = knock.event.room_version
        errors = []
        for server in dict.fromkeys([*servers, *self.fed.room_servers(room_id)]):
            if server == self.fed.server_name:
                continue
            try:
                leave = await self.fed.invites._leave_via(server, room_id, user_id, rv, content)
            except (FederationClientError, PduRejected, ValueError, KeyError, TypeError) as e:
                errors.append(f"{server}: {e}")
                continue
            position = await self.fed.invites.store.add(leave, [], self.s.clock.time_ms())
            self.s.pipeline.notifier.notify(EVENTS_STREAM, position, rooms=[],
                                            users=[user_id])
            return
        raise MatrixError(502, Codes.UNKNOWN, f"Could not withdraw the knock on {room_id}: "
                          + ("; ".join(errors) or "no server to ask"))

    def knock_servers(self, knock: OutOfBandMembership) -> list[str]:
        """Where a knock was sent: the servers of the state it came back with."""
        servers = []
        for e in knock.stripped_state:
            try:
                servers.append(get_domain(e["sender"]))
            except (InvalidIdentifier, KeyError, TypeError):
                continue
        return [x for x in dict.fromkeys(servers) if x != self.fed.server_name]
