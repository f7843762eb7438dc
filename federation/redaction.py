"""The redaction algorithm, per room version (rooms/fragments/v*-redactions.md).

Redaction defines what signatures and reference hashes cover, so it must match the spec
exactly: one key kept or dropped in error changes every event ID in the room.
"""

from __future__ import annotations

from typing import Any

from federation.events import Event, JsonDict
from federation.room_versions import RoomVersion

# Top-level keys kept in every room version.
_KEEP_TOP_LEVEL = frozenset(
    {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "auth_events",
        "origin_server_ts",
    }
)
# v1-v10 also keep these; v11 stopped protecting them.
_KEEP_TOP_LEVEL_PRE_V11 = frozenset({"origin", "membership", "prev_state"})

_POWER_LEVELS_KEYS = (
    "ban",
    "events",
    "events_default",
    "kick",
    "redact",
    "state_default",
    "users",
    "users_default",
)


def _content_keys(event_type: Any, rv: RoomVersion) -> tuple[str, ...] | None:
    """Content keys that survive redaction for this type; None means "keep all"."""
    if event_type == "m.room.member":
        keys: tuple[str, ...] = ("membership",)
        if rv.restricted_join_rule_fix:  # v9+
            keys += ("join_authorised_via_users_server",)
        return keys
    if event_type == "m.room.create":
        # v11 keeps the whole create content; before that only `creator`.
        return None if rv.updated_redaction_rules else ("creator",)
    if event_type == "m.room.join_rules":
        # v8 (not just v9) keeps `allow`: see the v8 room version page.
        return ("join_rule", "allow") if rv.restricted_join_rule else ("join_rule",)
    if event_type == "m.room.power_levels":
        if rv.updated_redaction_rules:
            return (*_POWER_LEVELS_KEYS, "invite")
        return _POWER_LEVELS_KEYS
    if event_type == "m.room.aliases" and rv.special_case_aliases_auth:  # v1-v5 only
        return ("aliases",)
    if event_type == "m.room.history_visibility":
        return ("history_visibility",)
    if event_type == "m.room.redaction" and rv.updated_redaction_rules:
        return ("redacts",)
    return ()


def redact(pdu: JsonDict, room_version: RoomVersion) -> JsonDict:
    """Return the redacted copy of ``pdu`` for ``room_version``; ``pdu`` is not modified.

    ``unsigned`` is dropped (it is not in the keep list). ``content`` is always present in
    the result (``{}`` if the input's was missing or not an object), as Synapse does, so
    the redacted form of a malformed event is still a well-shaped object.
    """
    keep = _KEEP_TOP_LEVEL
    if not room_version.updated_redaction_rules:
        keep = keep | _KEEP_TOP_LEVEL_PRE_V11
    out: JsonDict = {k: v for k, v in pdu.items() if k in keep}

    content = pdu.get("content")
    if not isinstance(content, dict):
        content = {}
    allowed = _content_keys(pdu.get("type"), room_version)
    if allowed is None:
        new_content = dict(content)
    else:
        new_content = {k: content[k] for k in allowed if k in content}

    if pdu.get("type") == "m.room.member" and room_version.updated_redaction_rules:
        # v11: third_party_invite survives but keeps only `signed`. When it has no `signed`
        # we keep an empty object, matching Synapse (the spec is silent on that case).
        tpi = content.get("third_party_invite")
        if isinstance(tpi, dict):
            new_content["third_party_invite"] = {"signed": tpi["signed"]} if "signed" in tpi else {}

    out["content"] = new_content
    return out


def redact_event(event: Event) -> Event:
    """The redacted form of ``event``, keeping its event ID.

    The reference hash is computed over the redacted form, so redacting does not change a
    v3+ event ID; passing it through avoids recomputing it.
    """
    return Event(redact(event.pdu_json(), event.room_version), event.room_version, event.event_id)
