"""Federation of rooms: our events out to the servers in the room, other servers'
transactions in, and joining rooms through another server (make_join / send_join).

Outbound: every event a local user makes in a room is queued (``FederationSender``) for each
other server with a joined member, plus the target's server for membership changes, in the
order the pipeline committed them.

Inbound: each PDU of a transaction goes through ``pdu_checks`` steps 1-3 (format, signatures
with keys from the keyring, content hash) and then ``EventsService.receive`` (auth rules,
soft failure). Missing prev events are fetched with /get_missing_events (bounded), missing
auth events one by one with /event; a gap still open after that is filled with the state
before each missing prev event (``federation_gap``: /state_ids, then /event, bounded).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from twisted.internet import defer, task

from federation.builder import membership_from_template
from federation.events import Event, JsonDict
from federation.identifiers import InvalidIdentifier, get_domain
from federation.pdu_checks import (
    PduRejected,
    Verdict,
    check_content_hash,
    check_signatures,
    check_well_formed,
)
from federation.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion, get_room_version
from federation.signing import SignatureError, required_signers
from federation.transport.client import FederationClientError, HttpResponseError
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.backfill import Backfiller
from homeserver.services.events import MissingEvents, ReceivedResult
from homeserver.services.federation_gap import Budget, GapFiller
from homeserver.services.federation_invites import FederationInvites
from homeserver.services.federation_outbox import OutboxCursor
from homeserver.services.federation_policy import server_allowed
from homeserver.services.join_authorisation import countersign_join, join_authoriser
from homeserver.storage.cache import LruCache
from homeserver.storage.engine import DatabaseUnavailable
from homeserver.storage.events import StoredEvent
from homeserver.storage.federation_out import FederationOutStore

if TYPE_CHECKING:
    from homeserver.services.registry import Services

logger = logging.getLogger(__name__)

MAX_PDUS = 50
MAX_EDUS = 100
MISSING_EVENTS_LIMIT = 20
MAX_FETCHED_AUTH = 50
# How long queueing committed events for other servers keeps retrying a database outage.
QUEUE_RETRY_SECONDS = 600.0
MEMBER = "m.room.member"


def q(value: str) -> str:
    return quote(value, safe="")


class FederationRooms:
    def __init__(self, s: Services) -> None:
        self.s = s
        self.server_name = s.config.server_name
        self._out_lock = defer.DeferredLock()
        self._txns: LruCache[tuple[str, str], JsonDict] = LruCache(10_000)
        self.outbox_cursor = OutboxCursor(FederationOutStore(s.db))
        s.pipeline.on_persisted.append(self._on_persisted)
        s.typing.on_change.append(self._on_local_typing)
        s.receipts.on_receipt.append(self._on_local_receipt)
        s.e2ee.to_device.on_remote.append(self._wake_destinations)
        s.presence.on_change.append(self._on_local_presence)
        s.db.on_commit.append(self._on_commit)
        client = s.federation_client

        async def query(server: str, body: JsonDict) -> JsonDict:
            answer = await client.post_json(server, "/_matrix/federation/v1/user/keys/query",
                                            body)
            return answer if isinstance(answer, dict) else {}

        async def claim(server: str, body: JsonDict) -> JsonDict:
            answer = await client.post_json(server, "/_matrix/federation/v1/user/keys/claim",
                                            body)
            return answer if isinstance(answer, dict) else {}

        s.e2ee.keys.set_remote(query, claim)
        self.invites = FederationInvites(s, self)
        self.backfiller = Backfiller(s, self)
        self.gaps = GapFiller(self)

    def _wake_destinations(self, destinations: list[str]) -> None:
        for d in destinations:
            if server_allowed(self.s.config, d):
                self.s.federation_sender.wake(d)

    # == outbound ============================================================================
    def _on_persisted(self, room_id: str, stored: list[StoredEvent]) -> None:
        local = [
            e for e in stored
            if e.rejected is None and not e.soft_failed and self._is_local(e.event.sender)
        ]
        if not local:
            return
        self.outbox_cursor.begin(local)

        async def job() -> None:
            try:
                await self._send_out(room_id, local)
            finally:
                # Even on failure (logged by _queue): a batch that stayed in flight would
                # hold the cursor back for good, and every restart would re-send everything
                # after it.
                await self.outbox_cursor.done(local)

        # FIFO: batches are queued in the order the pipeline committed them.
        self._queue(job, f"events of {room_id}")

    async def catch_up_outbox(self) -> None:
        """At start: queue our events that were committed but not yet handed to the outbox
        when the server stopped (a crash between the two)."""
        count = await self.outbox_cursor.catch_up(self._is_local, self._send_out)
        if count:
            logger.info("queued %d events for other servers that were committed before the"
                        " last stop but not yet queued", count)

    def _is_local(self, user_id: str) -> bool:
        try:
            return get_domain(user_id) == self.server_name
        except InvalidIdentifier:
            return False

    async def joined_servers(self, room_id: str) -> set[str]:
        members = await self.s.state_store.members(room_id, ["join"])
        out = set()
        for m in members:
            try:
                out.add(get_domain(m.user_id))
            except InvalidIdentifier:
                continue
        return out

    async def destinations(self, room_id: str, extra: Iterable[str] = ()) -> set[str]:
        """The other servers in the room (and ``extra``) we may send to under the policy."""
        servers = await self.joined_servers(room_id) | set(extra)
        servers.discard(self.server_name)
        return {d for d in servers if server_allowed(self.s.config, d)}

    def _queue(self, job: Callable[[], Coroutine[Any, Any, None]], what: str) -> None:
        async def run() -> None:
            # The events are committed already: if the database is down now, keep trying
            # (holding the FIFO, so the order stays) rather than never tell the other
            # servers. A retried job may queue a PDU twice; receivers dedupe by event ID.
            delay = 0.5
            waited = 0.0
            while True:
                try:
                    await job()
                    return
                except DatabaseUnavailable as e:
                    if waited >= QUEUE_RETRY_SECONDS or self.s.db.closed:
                        # Out of patience, or shut down (the database will not return in
                        # this process): give up, logged, rather than hold the process open.
                        raise
                    logger.warning("queueing %s: %s; retrying in %.1fs", what, e, delay)
                    await task.deferLater(self.s.federation_sender.reactor, delay,
                                          lambda: None)
                    waited += delay
                    delay = min(delay * 2, 30.0)

        d: defer.Deferred[None] = self._out_lock.run(run)
        d.addErrback(lambda f: logger.error("queueing %s failed: %s", what, f.getTraceback()))

    def _on_local_typing(self, room_id: str, user_id: str, typing: bool) -> None:
        if not self._is_local(user_id):
            return

        async def job() -> None:
            content = {"room_id": room_id, "user_id": user_id, "typing": typing}
            for server in await self.destinations(room_id):
                await self.s.federation_sender.send_edu(server, "m.typing", content)

        self._queue(job, "a typing notification")

    async def _on_local_receipt(self, user_id: str, room_id: str, event_id: str,
                                receipt_type: str, thread_id: str | None) -> None:
        # Private read receipts stay on this server.
        if not self._is_local(user_id) or receipt_type != "m.read":
            return
        data: JsonDict = {"ts": self.s.clock.time_ms()}
        if thread_id is not None:
            data["thread_id"] = thread_id
        content = {room_id: {receipt_type: {user_id: {"event_ids": [event_id], "data": data}}}}

        async def job() -> None:
            for server in await self.destinations(room_id):
                await self.s.federation_sender.send_edu(server, "m.receipt", content)

        self._queue(job, "a receipt")

    def _on_commit(self, notes: list[Any]) -> None:
        """A local user's device list changed: tell the servers sharing a room with them
        (``m.device_list_update``; they re-query the keys)."""
        from homeserver.storage.e2ee import DEVICE_LISTS

        for note in notes:
            if note.stream != DEVICE_LISTS:
                continue
            for user_id in note.users:
                if not self._is_local(user_id):
                    continue

                async def job(user_id: str = user_id, position: int = note.position) -> None:
                    servers: set[str] = set()
                    for m in await self.s.state_store.rooms_for_user(user_id, ["join"]):
                        servers |= await self.destinations(m.room_id)
                    content = {"user_id": user_id, "device_id": "", "stream_id": position,
                               "prev_id": [], "deleted": False}
                    for server in sorted(servers):
                        await self.s.federation_sender.send_edu(
                            server, "m.device_list_update", content)

                self._queue(job, "a device list update")

    def _on_local_presence(self, row: Any) -> None:
        user_id = row.user_id
        if not self._is_local(user_id):
            return
        update: JsonDict = {"user_id": user_id, "presence": row.state,
                            "currently_active": bool(row.currently_active)}
        if row.last_active_ts:
            update["last_active_ago"] = max(0, self.s.clock.time_ms() - row.last_active_ts)
        if row.status_msg is not None:
            update["status_msg"] = row.status_msg

        async def job() -> None:
            servers: set[str] = set()
            for m in await self.s.state_store.rooms_for_user(user_id, ["join"]):
                servers |= await self.destinations(m.room_id)
            for server in sorted(servers):
                await self.s.federation_sender.send_edu(server, "m.presence",
                                                        {"push": [update]})

        self._queue(job, "a presence update")

    async def _send_out(self, room_id: str, events: list[StoredEvent]) -> None:
        servers = await self.destinations(room_id)
        for e in events:
            targets = set(servers)
            if e.event.type == MEMBER and e.event.state_key:
                try:
                    targets |= await self.destinations(room_id, [get_domain(e.event.state_key)])
                except InvalidIdentifier:
                    pass
            if targets:
                await self.s.federation_sender.send_pdu(targets, e.event.pdu_json())

    # == checking PDUs =======================================================================
    async def check_pdu(self, pdu: Any, rv: RoomVersion) -> Event:
        """pdu_checks steps 1-3; raises PduRejected. Returns the event to carry on with
        (redacted if its content hash does not match)."""
        check_well_formed(pdu, rv)
        event = Event(dict(pdu), rv)
        try:
            servers = required_signers(event)
        except SignatureError as e:
            raise PduRejected(e.reason) from None
        wanted: dict[str, Collection[str]] = {
            server: list((event.signatures.get(server) or {}).keys()) for server in servers
        }
        lookup = await self.s.keyring.lookup_for(wanted)
        check_signatures(event, lookup)
        return check_content_hash(event).event

    async def room_version(self, room_id: str) -> RoomVersion | None:
        return await self.s.events.room_version(room_id)

    # == inbound transactions ================================================================
    async def on_transaction(self, origin: str, txn_id: str, body: JsonDict) -> JsonDict:
        cached = self._txns.get((origin, txn_id))
        if cached is not None:
            return cached
        pdus = body.get("pdus", [])
        edus = body.get("edus", [])
        if not isinstance(pdus, list) or not isinstance(edus, list):
            raise MatrixError(400, Codes.BAD_JSON, "pdus and edus must be lists")
        if len(pdus) > MAX_PDUS or len(edus) > MAX_EDUS:
            raise MatrixError(400, Codes.BAD_JSON,
                              f"At most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs per transaction")
        results: dict[str, JsonDict] = {}
        for pdu in pdus:
            if not isinstance(pdu, dict) or not isinstance(pdu.get("room_id"), str):
                continue
            try:
                retracted = await self.invites.on_retraction(origin, pdu)
            except Exception:
                logger.exception("failed to process a PDU from %s", origin)
                continue
            if retracted is not None:
                results[retracted[0]] = retracted[1]
                continue
            rv = await self.room_version(pdu["room_id"])
            if rv is None:
                # Not a room we are in: nothing to do with it.
                continue
            event_id = None
            if not await self.acl_allows(pdu["room_id"], origin):
                continue
            try:
                event = await self.check_pdu(pdu, rv)
                event_id = event.event_id
                if not server_allowed(self.s.config, get_domain(event.sender)):
                    raise PduRejected(f"events from {get_domain(event.sender)} are not "
                                      "accepted by this server's federation policy")
                result = await self.receive(origin, event)
                results[event_id] = (
                    {} if result.verdict is not Verdict.REJECTED
                    else {"error": result.reason or "rejected"}
                )
            except PduRejected as e:
                if event_id is None:
                    try:
                        event_id = Event(dict(pdu), rv).event_id
                    except Exception:
                        continue
                results[event_id] = {"error": e.reason}
            except MissingEvents as e:
                assert event_id is not None
                results[event_id] = {"error": f"missing events: {', '.join(e.event_ids)}"}
            except Exception as e:
                logger.exception("failed to process a PDU from %s", origin)
                if event_id is not None:
                    results[event_id] = {"error": f"internal error: {type(e).__name__}"}
        for edu in edus:
            if not isinstance(edu, dict):
                continue
            try:
                await self.on_edu(origin, edu)
            except Exception:
                logger.exception("failed to process a %s EDU from %s", edu.get("edu_type"),
                                 origin)
        response: JsonDict = {"pdus": results}
        self._txns.set((origin, txn_id), response)
        return response

    async def receive(self, origin: str, event: Event, depth: int = 0) -> ReceivedResult:
        """The pipeline's receive, fetching missing prev events (get_missing_events) and
        missing auth events (/event) from ``origin`` once, then filling a gap that is left
        with the state before it (``GapFiller``)."""
        try:
            return await self.s.pipeline.receive(event)
        except MissingEvents as e:
            if depth > 0:
                raise
            missing = set(e.event_ids)
        budget = Budget()
        prevs = missing & set(event.prev_event_ids)
        if prevs:
            await self._get_missing_events(origin, event, budget)
        still = [m for m in missing if await self.s.events.get_event(m) is None]
        for event_id in still[:MAX_FETCHED_AUTH]:
            fetched = await self._fetch_event(origin, event_id, event.room_version)
            if fetched is not None and fetched.room_id == event.room_id:
                try:
                    await self.receive(origin, fetched, depth + 1)
                except MissingEvents:
                    logger.info("cannot fill the gap before %s", event_id)
        return await self._receive_or_fill(origin, event, budget)

    async def _receive_or_fill(self, origin: str, event: Event,
                               budget: Budget) -> ReceivedResult:
        try:
            return await self.s.pipeline.receive(event)
        except MissingEvents as e:
            prevs = [p for p in e.event_ids if p in event.prev_event_ids]
            if not prevs:
                raise
        return await self.gaps.fill(origin, event, prevs, budget)

    async def _get_missing_events(self, origin: str, event: Event, budget: Budget) -> None:
        room = await self.s.events.get_room(event.room_id)
        earliest = list(room.extremities) if room is not None else []
        try:
            response = await self.s.federation_client.post_json(
                origin, f"/_matrix/federation/v1/get_missing_events/{q(event.room_id)}",
                {"earliest_events": earliest, "latest_events": [event.event_id],
                 "limit": MISSING_EVENTS_LIMIT, "min_depth": 0},
            )
        except FederationClientError as e:
            logger.info("get_missing_events from %s failed: %s", origin, e)
            return
        pdus = response.get("events") if isinstance(response, dict) else None
        if not isinstance(pdus, list):
            return
        events = []
        for pdu in pdus[:MISSING_EVENTS_LIMIT]:
            try:
                events.append(await self.check_pdu(pdu, event.room_version))
            except PduRejected as e:
                logger.info("a missing event from %s is invalid: %s", origin, e.reason)
        for ev in sorted(events, key=lambda e: (e.depth, e.origin_server_ts)):
            if ev.room_id != event.room_id:
                continue
            try:
                # The oldest of them may still have a gap before it: filled from its state.
                await self._receive_or_fill(origin, ev, budget)
            except (MissingEvents, PduRejected) as e:
                logger.info("gap before %s remains: %s", ev.event_id, e)

    async def _fetch_event(self, origin: str, event_id: str, rv: RoomVersion) -> Event | None:
        try:
            response = await self.s.federation_client.get_json(
                origin, f"/_matrix/federation/v1/event/{q(event_id)}")
            pdus = response.get("pdus") if isinstance(response, dict) else None
            if not isinstance(pdus, list) or len(pdus) != 1:
                return None
            event = await self.check_pdu(pdus[0], rv)
        except (FederationClientError, PduRejected) as e:
            logger.info("fetching %s from %s failed: %s", event_id, origin, e)
            return None
        return event if event.event_id == event_id else None

    # == EDUs ================================================================================
    async def on_edu(self, origin: str, edu: JsonDict) -> None:
        edu_type = edu.get("edu_type")
        content = edu.get("content")
        if not isinstance(content, dict):
            return
        if edu_type == "m.typing":
            await self._on_typing(origin, content)
        elif edu_type == "m.receipt":
            await self._on_receipt(origin, content)
        elif edu_type == "m.direct_to_device":
            await self._on_to_device(origin, content)
        elif edu_type == "m.presence":
            await self._on_presence(origin, content)
        elif edu_type in ("m.device_list_update", "m.signing_key_update"):
            await self._on_device_list_update(origin, content)

    async def _on_device_list_update(self, origin: str, content: JsonDict) -> None:
        """A remote user's devices or cross-signing keys changed: put them on our
        device_lists stream so local clients sharing a room re-query their keys."""
        from homeserver.storage.e2ee import note_device_list_change

        user_id = content.get("user_id")
        if not isinstance(user_id, str) or not user_id.endswith(":" + origin):
            return
        shared = await self.s.state_store.users_sharing_rooms(user_id)
        if not any(self._is_local(u) for u in shared):
            return
        await self.s.db.run("remote_device_list_update", note_device_list_change, [user_id])

    async def _on_presence(self, origin: str, content: JsonDict) -> None:
        """Only for users of the origin who share a room with one of ours."""
        push = content.get("push")
        if not isinstance(push, list):
            return
        for update in push[:100]:
            if not isinstance(update, dict):
                continue
            user_id = update.get("user_id")
            if not isinstance(user_id, str) or not user_id.endswith(":" + origin):
                continue
            shared = await self.s.state_store.users_sharing_rooms(user_id)
            if any(self._is_local(u) for u in shared):
                await self.s.presence.receive_remote(user_id, update)

    async def _on_to_device(self, origin: str, content: JsonDict) -> None:
        """Into local devices' inboxes; ``message_id`` makes a retried EDU a no-op."""
        from homeserver.storage.to_device import LocalMessage

        sender, event_type = content.get("sender"), content.get("type")
        message_id, messages = content.get("message_id"), content.get("messages")
        if not (isinstance(sender, str) and isinstance(event_type, str)
                and isinstance(message_id, str) and isinstance(messages, dict)):
            return
        if not sender.endswith(":" + origin):
            return
        local = [
            LocalMessage(user_id, device_id, body)
            for user_id, devices in messages.items()
            if isinstance(user_id, str) and self._is_local(user_id) and isinstance(devices, dict)
            for device_id, body in devices.items()
            if isinstance(device_id, str) and isinstance(body, dict)
        ]
        if local:
            await self.s.e2ee.to_device.store.send(
                sender, f"federation:{origin}", message_id, event_type, local, {},
                self.s.clock.time_ms())

    async def _on_receipt(self, origin: str, content: JsonDict) -> None:
        for room_id, by_type in content.items():
            if not isinstance(by_type, dict):
                continue
            # A server the room's ACL denies may not move its receipts either (as Synapse).
            if not await self.acl_allows(room_id, origin):
                continue
            for receipt_type, by_user in by_type.items():
                if receipt_type != "m.read" or not isinstance(by_user, dict):
                    continue
                for user_id, receipt in by_user.items():
                    if not isinstance(receipt, dict) or not user_id.endswith(":" + origin):
                        continue
                    ids = receipt.get("event_ids")
                    data = receipt.get("data")
                    thread = data.get("thread_id") if isinstance(data, dict) else None
                    if not isinstance(ids, list):
                        continue
                    for event_id in ids[:10]:
                        if isinstance(event_id, str):
                            await self.s.receipts.receive_remote(
                                room_id, user_id, receipt_type, event_id,
                                thread if isinstance(thread, str) else None)

    async def _on_typing(self, origin: str, content: JsonDict) -> None:
        room_id, user_id = content.get("room_id"), content.get("user_id")
        if not isinstance(room_id, str) or not isinstance(user_id, str):
            return
        if not user_id.endswith(":" + origin):
            return
        membership = await self.s.state_store.membership(room_id, user_id)
        if membership is None or membership.membership != "join":
            return
        if not await self.acl_allows(room_id, origin):
            return
        typing = self.s.typing
        if content.get("typing") is True:
            timeout = content.get("timeout")
            typing.start(room_id, user_id, timeout if isinstance(timeout, int) else 30_000)
        else:
            typing.stop(room_id, user_id)

    # == joins, serving side =================================================================
    async def make_join(self, origin: str, room_id: str, user_id: str,
                        versions: Sequence[str]) -> JsonDict:
        self._check_user_origin(origin, user_id)
        rv = await self.room_version(room_id)
        if rv is not None:
            await self.check_acl(room_id, origin)
        if rv is None or not await self._has_local_members(room_id):
            raise MatrixError(404, Codes.NOT_FOUND, f"This server is not in room {room_id}")
        await self.s.rooms.check_not_blocked(room_id)
        if rv.identifier not in versions:
            raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION",
                              f"Room version {rv.identifier} is not supported by {origin}",
                              room_version=rv.identifier)
        content: JsonDict = {"membership": "join"}
        authoriser = await join_authoriser(self.s, rv, room_id, user_id)
        if authoriser is not None:
            # A restricted room: one of our users vouches for the join.
            content["join_authorised_via_users_server"] = authoriser
        _, template = await self.s.pipeline.template(room_id, MEMBER, user_id, content, user_id)
        return {"event": template, "room_version": rv.identifier}

    async def make_leave(self, origin: str, room_id: str, user_id: str) -> JsonDict:
        self._check_user_origin(origin, user_id)
        rv = await self.room_version(room_id)
        if rv is None or not await self._has_local_members(room_id):
            raise MatrixError(404, Codes.NOT_FOUND, f"This server is not in room {room_id}")
        await self.check_acl(room_id, origin)
        _, template = await self.s.pipeline.template(
            room_id, MEMBER, user_id, {"membership": "leave"}, user_id)
        return {"event": template, "room_version": rv.identifier}

    async def _accept_membership(
        self, origin: str, room_id: str, event_id: str, pdu: JsonDict, membership: str
    ) -> Event:
        """send_join/send_leave: check the signed member event a peer built from our
        template, then run it through the pipeline; 4xx unless it is accepted."""
        rv = await self.room_version(room_id)
        if rv is None:
            raise MatrixError(404, Codes.NOT_FOUND, f"Unknown room {room_id}")
        await self.check_acl(room_id, origin)
        if membership == "join":
            await self.s.rooms.check_not_blocked(room_id)
        try:
            # Well formed and ours to take before we countersign it (a restricted join);
            # the signatures are checked after, ours among them.
            check_well_formed(pdu, rv)
            event = Event(dict(pdu), rv)
            self._check_member_event(origin, room_id, event_id, event, membership)
            if membership == "join":
                pdu = await countersign_join(self.s, rv, room_id, event.pdu_json())
            event = await self.check_pdu(pdu, rv)
        except PduRejected as e:
            raise MatrixError(400, Codes.BAD_JSON,
                              f"Invalid {membership} event: {e.reason}") from None
        self._check_member_event(origin, room_id, event_id, event, membership)
        result = await self.receive(origin, event)
        if result.verdict is not Verdict.ACCEPTED:
            raise MatrixError(
                403, Codes.FORBIDDEN,
                f"The {membership} was not accepted: {result.reason or 'soft-failed'}",
            )
        return event

    def _check_member_event(self, origin: str, room_id: str, event_id: str, event: Event,
                            membership: str) -> None:
        if (event.event_id != event_id or event.room_id != room_id or event.type != MEMBER
                or event.membership != membership or event.state_key != event.sender):
            raise MatrixError(400, Codes.BAD_JSON, f"Not a {membership} event for this room")
        self._check_user_origin(origin, event.sender)

    async def send_leave(self, origin: str, room_id: str, event_id: str,
                         pdu: JsonDict) -> JsonDict:
        event = await self._accept_membership(origin, room_id, event_id, pdu, "leave")
        others = await self.destinations(room_id) - {origin}
        if others:
            await self.s.federation_sender.send_pdu(others, event.pdu_json())
        return {}

    async def send_join(self, origin: str, room_id: str, event_id: str,
                        pdu: JsonDict) -> JsonDict:
        event = await self._accept_membership(origin, room_id, event_id, pdu, "join")
        stored = await self.s.events.get_event(event.event_id)
        assert stored is not None
        state_ids = dict(await self.s.state_store.state_at_group(stored.state_group))
        if stored.replaces_state is not None:
            state_ids[event.state_tuple] = stored.replaces_state
        else:
            state_ids.pop(event.state_tuple, None)
        state = await self.s.events.get_events(state_ids.values())
        chain = await self.auth_chain([*state_ids.values(), event.event_id], room_id)
        # Everyone else in the room hears of the join from us.
        others = await self.destinations(room_id) - {origin}
        if others:
            await self.s.federation_sender.send_pdu(others, event.pdu_json())
        return {
            "origin": self.server_name,
            "event": event.pdu_json(),
            "state": [e.event.pdu_json() for e in state.values()],
            "auth_chain": [e.pdu_json() for e in chain],
            "members_omitted": False,
        }

    async def auth_chain(self, event_ids: Iterable[str], room_id: str) -> list[Event]:
        """Every auth event, transitively, of the given events (the create event too)."""
        seen: dict[str, Event] = {}
        todo = set(event_ids)
        rv = await self.room_version(room_id)
        first = await self.s.events.get_events(list(todo))
        todo = set()
        for se in first.values():
            todo.update(se.event.auth_event_ids)
        if rv is not None and rv.room_id_is_create_event_hash:
            from federation.identifiers import create_event_id_from_room_id

            todo.add(create_event_id_from_room_id(room_id))
        while todo:
            found = await self.s.events.get_events([t for t in todo if t not in seen])
            todo = set()
            for eid, se in found.items():
                seen[eid] = se.event
                todo.update(a for a in se.event.auth_event_ids if a not in seen)
        return list(seen.values())

    def _check_user_origin(self, origin: str, user_id: str) -> None:
        try:
            domain = get_domain(user_id)
        except InvalidIdentifier:
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid user ID") from None
        if domain != origin:
            raise MatrixError(403, Codes.FORBIDDEN,
                              f"{origin} cannot act for {user_id}")

    async def _has_local_members(self, room_id: str) -> bool:
        return self.server_name in await self.joined_servers(room_id)

    # == joins, joining side =================================================================
    async def join_remote(self, room_id: str, user_id: str, servers: Sequence[str],
                          content: Mapping[str, Any]) -> str:
        """Join a room this server is not in through one of ``servers`` (tried in turn),
        after the server that invited the user, before the servers our stale view of a room
        we left knows."""
        await self.s.rooms.check_not_blocked(room_id)
        errors = []
        refusals = []
        versions = sorted(KNOWN_ROOM_VERSIONS)
        inviters = await self.invites.inviter_servers(room_id, user_id)
        for server in dict.fromkeys([*inviters, *servers, *await self._stale_servers(room_id)]):
            if server == self.server_name:
                continue
            try:
                return await self._join_via(server, room_id, user_id, versions, content)
            except (FederationClientError, PduRejected, ValueError, KeyError,
                    TypeError) as e:
                logger.info("joining %s via %s failed: %s", room_id, server, e)
                errors.append(f"{server}: {e}")
                if isinstance(e, HttpResponseError) and e.status == 403:
                    refusals.append(f"{server}: {e.error or e}")
        if refusals:
            # A resident server said no (banned, not invited, ...): the client's 403.
            raise MatrixError(403, Codes.FORBIDDEN,
                              f"Not allowed to join {room_id}: " + "; ".join(refusals))
        raise MatrixError(404, Codes.NOT_FOUND,
                          f"No server could be reached to join {room_id}: " + "; ".join(errors)
                          if errors else f"No server known to join {room_id} through")

    async def _join_via(self, server: str, room_id: str, user_id: str,
                        versions: Sequence[str], content: Mapping[str, Any]) -> str:
        client = self.s.federation_client
        response = await client.get_json(
            server, f"/_matrix/federation/v1/make_join/{q(room_id)}/{q(user_id)}",
            {"ver": list(versions)})
        if not isinstance(response, dict) or not isinstance(response.get("event"), dict):
            raise ValueError("make_join answered without an event template")
        rv = get_room_version(response["room_version"])
        template = response["event"]
        offered = template.get("content") if isinstance(template, dict) else None
        extra: dict[str, Any] = offered if isinstance(offered, dict) else {}
        join = membership_from_template(
            room_version=rv, template=template, room_id=room_id, user_id=user_id,
            content={**extra, **content, "membership": "join"},
            origin_server_ts=self.s.clock.time_ms(), signing_key=self.s.pipeline.signing_key,
            server_name=self.server_name)
        pdu = join.pdu_json()
        response = await client.put_json(
            server, f"/_matrix/federation/v2/send_join/{q(room_id)}/{q(join.event_id)}", pdu)
        if not isinstance(response, dict):
            raise ValueError("send_join answered with no object")
        if isinstance(response.get("event"), dict):
            # The resident server may have countersigned it (restricted joins).
            signed = Event(response["event"], rv)
            if signed.event_id == join.event_id:
                join = signed
        state = [await self.check_pdu(p, rv) for p in response["state"]]
        chain = [await self.check_pdu(p, rv) for p in response["auth_chain"]]
        for e in [*state, *chain]:
            if e.room_id != room_id:
                raise ValueError(f"{e.event_id} is not an event of {room_id}")
        await self._check_auth_chain(state, chain)
        await self.s.pipeline.persist_joined_room(rv, state, chain, join)
        return join.event_id

    async def _check_auth_chain(self, state: Sequence[Event], chain: Sequence[Event]) -> None:
        """Each state event must pass the auth rules against its own auth events."""
        from federation.auth_rules import AuthError, check_auth

        by_id = {e.event_id: e for e in [*chain, *state]}
        create = next((e for e in by_id.values() if e.is_create()), None)
        if create is None:
            raise ValueError("no create event in the room state")
        for e in state:
            auth = {by_id[a].state_tuple: by_id[a] for a in e.auth_event_ids if a in by_id}
            if e.room_version.room_id_is_create_event_hash and not e.is_create():
                auth[create.state_tuple] = create
            try:
                check_auth(e, auth)
            except AuthError as err:
                raise ValueError(f"state event {e.event_id} fails the auth rules: "
                                 f"{err.reason}") from None

    # == reads served to peers ===============================================================
    async def may_see(self, origin: str, stored: StoredEvent) -> bool:
        """A server may read an event of a room one of its users is joined to, now or at
        the event, or of a world-readable room."""
        if origin in await self.joined_servers(stored.room_id):
            return True
        state = await self.s.state_store.state_at_group(stored.state_group)
        ids = [eid for (t, sk), eid in state.items()
               if (t == MEMBER and sk.endswith(":" + origin))
               or t == "m.room.history_visibility"]
        found = await self.s.events.get_events(ids)
        for se in found.values():
            ev = se.event
            if ev.type == MEMBER and ev.membership == "join":
                return True
            if (ev.type == "m.room.history_visibility"
                    and ev.content.get("history_visibility") == "world_readable"):
                return True
        return False

    async def missing_events(self, origin: str, room_id: str, earliest: Sequence[str],
                             latest: Sequence[str], limit: int) -> list[JsonDict]:
        if origin not in await self.joined_servers(room_id):
            raise MatrixError(403, Codes.FORBIDDEN, f"{origin} is not in room {room_id}")
        await self.check_acl(room_id, origin)
        stop = set(earliest)
        seen: set[str] = set(latest) | stop
        out: list[Event] = []
        frontier = list(latest)
        while frontier and len(out) < limit:
            found = await self.s.events.get_events(frontier)
            frontier = []
            for eid in sorted(found, key=lambda i: -found[i].depth):
                se = found[eid]
                if se.room_id != room_id:
                    continue
                for p in se.event.prev_event_ids:
                    if p in seen:
                        continue
                    seen.add(p)
                    frontier.append(p)
            prevs = await self.s.events.get_events(frontier)
            for p in frontier:
                if p in prevs and prevs[p].room_id == room_id and len(out) < limit:
                    out.append(prevs[p].event)
        out.sort(key=lambda e: e.depth)
        return [e.pdu_json() for e in out]

    async def should_join_remotely(self, room_id: str) -> bool:
        """Join through another server: we do not know the room, or no local user is in
        it any more (our view of it may be stale) and other servers were."""
        if not await self.s.pipeline.room_exists(room_id):
            return True
        if await self._has_local_members(room_id):
            return False
        return bool(await self._stale_servers(room_id))

    async def _stale_servers(self, room_id: str) -> list[str]:
        """For a room no local user is joined to: the other servers with members joined
        when we last knew it."""
        if not await self.s.pipeline.room_exists(room_id):
            return []
        servers = await self.joined_servers(room_id)
        if self.server_name in servers:
            return []
        return sorted(d for d in servers if server_allowed(self.s.config, d))

    def room_servers(self, room_id: str) -> list[str]:
        """The server in a (pre-v12) room ID, a last resort to join through."""
        try:
            return [get_domain(room_id)]
        except InvalidIdentifier:
            return []

    # == end-to-end encryption keys served to peers ==========================================
    def local_only(self, wanted: Any) -> dict[str, Any]:
        if not isinstance(wanted, dict):
            raise MatrixError(400, Codes.BAD_JSON, "Expected an object of user IDs")
        return {u: v for u, v in wanted.items() if isinstance(u, str) and self._is_local(u)}

    async def user_devices(self, user_id: str) -> JsonDict:
        if not self._is_local(user_id):
            raise MatrixError(403, Codes.FORBIDDEN, f"{user_id} is not a user of this server")
        keys = self.s.e2ee.keys
        answer = await keys.query("", {"device_keys": {user_id: []}})
        device_keys = answer["device_keys"].get(user_id, {})
        devices = []
        for device in await self.s.devices.get_devices(user_id):
            if device.device_id not in device_keys:
                continue
            entry: JsonDict = {"device_id": device.device_id,
                               "keys": device_keys[device.device_id]}
            if device.display_name:
                entry["device_display_name"] = device.display_name
            devices.append(entry)
        out: JsonDict = {"user_id": user_id,
                         "stream_id": await keys.current_device_list_position(),
                         "devices": devices}
        if user_id in answer.get("master_keys", {}):
            out["master_key"] = answer["master_keys"][user_id]
        if user_id in answer.get("self_signing_keys", {}):
            out["self_signing_key"] = answer["self_signing_keys"][user_id]
        return out

    # == server ACLs ===========================================================================
    async def acl_allows(self, room_id: str, server_name: str) -> bool:
        """m.room.server_acl of the room's current state (no ACL: everyone)."""
        stored = await self.s.pipeline.current_state_event(room_id, ("m.room.server_acl", ""))
        if stored is None or stored.rejected is not None:
            return True
        return acl_allows(stored.event.content, server_name)

    async def check_acl(self, room_id: str, origin: str) -> None:
        if not await self.acl_allows(room_id, origin):
            raise MatrixError(403, Codes.FORBIDDEN,
                              f"{origin} is denied by the server ACL of {room_id}")

    # == state, auth chains and history served to peers =======================================
    async def readable_event(self, origin: str, room_id: str, event_id: str) -> StoredEvent:
        await self.check_acl(room_id, origin)
        stored = await self.s.events.get_event(event_id)
        if stored is None or stored.room_id != room_id or not await self.may_see(origin, stored):
            raise MatrixError(404, Codes.NOT_FOUND, f"Unknown event {event_id} in {room_id}")
        return stored

    async def state_before(self, stored: StoredEvent) -> dict[tuple[str, str], str]:
        state = dict(await self.s.state_store.state_at_group(stored.state_group))
        ev = stored.event
        if ev.is_state() and stored.rejected is None and state.get(ev.state_tuple) == ev.event_id:
            if stored.replaces_state is not None:
                state[ev.state_tuple] = stored.replaces_state
            else:
                del state[ev.state_tuple]
        return state

    async def room_state(self, origin: str, room_id: str, event_id: str,
                         ids_only: bool) -> JsonDict:
        stored = await self.readable_event(origin, room_id, event_id)
        state = await self.state_before(stored)
        chain = await self.auth_chain(state.values(), room_id)
        if ids_only:
            return {"pdu_ids": sorted(state.values()),
                    "auth_chain_ids": sorted(e.event_id for e in chain)}
        found = await self.s.events.get_events(state.values())
        return {"pdus": [se.event.pdu_json() for se in found.values()],
                "auth_chain": [e.pdu_json() for e in chain]}

    async def event_auth(self, origin: str, room_id: str, event_id: str) -> JsonDict:
        stored = await self.readable_event(origin, room_id, event_id)
        chain = await self.auth_chain([stored.event_id], room_id)
        return {"auth_chain": [e.pdu_json() for e in chain]}

    async def backfill(self, origin: str, room_id: str, starts: Sequence[str],
                       limit: int) -> JsonDict:
        """The events before (and including) ``starts``, newest first by depth, walking
        prev_events, that ``origin`` may see."""
        await self.check_acl(room_id, origin)
        seen: set[str] = set(starts)
        frontier = list(starts)
        out: list[StoredEvent] = []
        while frontier and len(out) < limit:
            found = await self.s.events.get_events(frontier)
            frontier = []
            for se in sorted(found.values(), key=lambda e: -e.depth):
                if se.room_id != room_id or len(out) >= limit:
                    continue
                out.append(se)
                for p in se.event.prev_event_ids:
                    if p not in seen:
                        seen.add(p)
                        frontier.append(p)
        visible = [se for se in out if await self.may_see(origin, se)]
        return {"origin": self.server_name, "origin_server_ts": self.s.clock.time_ms(),
                "pdus": [se.event.pdu_json() for se in visible]}


def acl_allows(content: Any, server_name: str) -> bool:
    """The m.room.server_acl rules: IP literals, then deny, then allow (globs on the host
    name without port)."""
    from fnmatch import fnmatchcase

    if not isinstance(content, dict):
        return True
    host = server_name.lower()
    if host.startswith("["):
        host = host.split("]")[0] + "]"
    elif ":" in host:
        host = host.rsplit(":", 1)[0]
    is_ip = host.startswith("[") or (
        host.count(".") == 3 and all(p.isdigit() for p in host.split(".")))
    if is_ip and content.get("allow_ip_literals", True) is False:
        return False

    def patterns(key: str) -> list[str]:
        v = content.get(key)
        return [p.lower() for p in v if isinstance(p, str)] if isinstance(v, list) else []

    if any(fnmatchcase(host, p) for p in patterns("deny")):
        return False
    return any(fnmatchcase(host, p) for p in patterns("allow"))
