"""The server-default push rules: the spec's predefined rules (client-server API, "Predefined
Rules"), in the order they are evaluated, plus the legacy body-based mention rules.

``.m.rule.master`` comes before every user-defined override rule; the other default rules of a
kind come after the user's rules of that kind. Rules that name the user (invites for them,
mentions of them, their localpart) are templates: ``default_rules(user_id)`` fills them in.

The legacy rules (``.m.rule.contains_display_name``, ``.m.rule.contains_user_name`` and
``.m.rule.roomnotif``) were removed from the spec in v1.17 but are what clients that do not
send ``m.mentions`` rely on; like Synapse we keep them (``push.legacy_mention_rules``) and,
as spec v1.7 says, they do not apply to an event whose content has ``m.mentions``.
"""

from __future__ import annotations

import copy
from typing import Any

Rule = dict[str, Any]
KINDS = ("override", "content", "room", "sender", "underride")

LEGACY_MENTION_RULES = frozenset(
    {".m.rule.contains_display_name", ".m.rule.contains_user_name", ".m.rule.roomnotif"}
)

_USER = "[the user's Matrix ID]"
_LOCALPART = "[the user's localpart]"

_SOUND_DEFAULT = {"set_tweak": "sound", "value": "default"}
_HIGHLIGHT = {"set_tweak": "highlight"}


def _rule(rule_id: str, conditions: list[dict[str, Any]], actions: list[Any],
          enabled: bool = True) -> Rule:
    return {"rule_id": rule_id, "default": True, "enabled": enabled,
            "conditions": conditions, "actions": actions}


def _match(key: str, pattern: str) -> dict[str, Any]:
    return {"kind": "event_match", "key": key, "pattern": pattern}


# Before the user's own override rules.
MASTER = _rule(".m.rule.master", [], [], enabled=False)

OVERRIDE = [
    _rule(".m.rule.suppress_notices", [_match("content.msgtype", "m.notice")], []),
    _rule(
        ".m.rule.invite_for_me",
        [_match("type", "m.room.member"), _match("content.membership", "invite"),
         _match("state_key", _USER)],
        ["notify", _SOUND_DEFAULT],
    ),
    _rule(".m.rule.member_event", [_match("type", "m.room.member")], []),
    _rule(
        ".m.rule.is_user_mention",
        [{"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids",
          "value": _USER}],
        ["notify", _SOUND_DEFAULT, _HIGHLIGHT],
    ),
    # Legacy (removed in v1.17).
    _rule(".m.rule.contains_display_name", [{"kind": "contains_display_name"}],
          ["notify", _SOUND_DEFAULT, _HIGHLIGHT]),
    _rule(
        ".m.rule.is_room_mention",
        [{"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
         {"kind": "sender_notification_permission", "key": "room"}],
        ["notify", _HIGHLIGHT],
    ),
    # Legacy (removed in v1.17).
    _rule(
        ".m.rule.roomnotif",
        [_match("content.body", "@room"),
         {"kind": "sender_notification_permission", "key": "room"}],
        ["notify", _HIGHLIGHT],
    ),
    _rule(".m.rule.tombstone", [_match("type", "m.room.tombstone"), _match("state_key", "")],
          ["notify", _HIGHLIGHT]),
    _rule(".m.rule.reaction", [_match("type", "m.reaction")], []),
    _rule(".m.rule.room.server_acl",
          [_match("type", "m.room.server_acl"), _match("state_key", "")], []),
    _rule(
        ".m.rule.suppress_edits",
        [{"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type",
          "value": "m.replace"}],
        [],
    ),
]

CONTENT = [
    # Legacy (removed in v1.17).
    {"rule_id": ".m.rule.contains_user_name", "default": True, "enabled": True,
     "pattern": _LOCALPART, "actions": ["notify", _SOUND_DEFAULT, _HIGHLIGHT]},
]

UNDERRIDE = [
    _rule(".m.rule.call", [_match("type", "m.call.invite")],
          ["notify", {"set_tweak": "sound", "value": "ring"}]),
    _rule(".m.rule.encrypted_room_one_to_one",
          [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.encrypted")],
          ["notify", _SOUND_DEFAULT]),
    _rule(".m.rule.room_one_to_one",
          [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.message")],
          ["notify", _SOUND_DEFAULT]),
    _rule(".m.rule.message", [_match("type", "m.room.message")], ["notify"]),
    _rule(".m.rule.encrypted", [_match("type", "m.room.encrypted")], ["notify"]),
]


def _fill(value: Any, user_id: str, localpart: str) -> Any:
    if value == _USER:
        return user_id
    if value == _LOCALPART:
        return localpart
    if isinstance(value, dict):
        return {k: _fill(v, user_id, localpart) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, user_id, localpart) for v in value]
    return value


def default_rules(user_id: str, *, legacy: bool = True) -> dict[str, tuple[list[Rule], list[Rule]]]:
    """kind -> (default rules before the user's rules, default rules after them), each rule
    a fresh dict filled in for ``user_id``."""
    localpart = user_id[1:].split(":", 1)[0]

    def fill(rules: list[Rule]) -> list[Rule]:
        return [
            _fill(copy.deepcopy(r), user_id, localpart)
            for r in rules
            if legacy or r["rule_id"] not in LEGACY_MENTION_RULES
        ]

    return {
        "override": (fill([MASTER]), fill(OVERRIDE)),
        "content": ([], fill(CONTENT)),
        "room": ([], []),
        "sender": ([], []),
        "underride": ([], fill(UNDERRIDE)),
    }


def default_rule_ids(*, legacy: bool = True) -> dict[str, str]:
    """rule_id -> kind for every server-default rule."""
    out = {MASTER["rule_id"]: "override"}
    for kind, rules in (("override", OVERRIDE), ("content", CONTENT), ("underride", UNDERRIDE)):
        for r in rules:
            if legacy or r["rule_id"] not in LEGACY_MENTION_RULES:
                out[r["rule_id"]] = kind
    return out
