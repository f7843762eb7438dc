"""Users' push rules: validation of what clients send, the ruleset each user sees (their own
rules merged with the server defaults and their settings of those), and the compiled form the
evaluator runs, cached per user.

Only the user's own rules and their changes to server-default rules are stored; the defaults
are filled in when the ruleset is read. Every change is written to the user's global
``m.push_rules`` account data too, which is how /sync tells their other clients.

Errors: an unknown scope or kind, or a malformed rule ID, is 400 ``M_INVALID_PARAM``; a body
of the wrong shape 400 ``M_BAD_JSON`` (``M_MISSING_PARAM`` for a missing required key);
actions or conditions with invalid values 400 ``M_INVALID_PARAM``; a ``before``/``after``
rule that does not exist 400 ``M_UNKNOWN`` (the spec's example); a rule that does not exist
404 ``M_NOT_FOUND``. Server-default rules cannot be added, deleted or placed against (400
``M_INVALID_PARAM``), only enabled, disabled or given other actions.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet import defer

from homeserver.clock import Clock
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.push.default_rules import (
    KINDS,
    LEGACY_MENTION_RULES,
    Rule,
    default_rule_ids,
    default_rules,
)
from homeserver.services.push.evaluator import (
    MAX_SAFE_INT,
    CompiledRule,
    CompiledRuleset,
    assemble,
    compile_condition,
    compile_rule,
    parse_member_count,
)
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.cache import LruCache
from homeserver.storage.engine import StreamNote, Txn
from homeserver.storage.push import (
    DefaultSetting,
    PushStore,
    RuleNotFound,
    StoredRule,
    UserRules,
    load_rules_txn,
)

PUSH_RULES_TYPE = "m.push_rules"
IGNORED_USERS_TYPE = "m.ignored_user_list"
SCOPE = "global"
MAX_RULE_ID_BYTES = 255
MAX_PATTERN_CHARS = 1000
MAX_CONDITIONS = 50
MAX_ACTIONS = 50
MAX_USER_RULES = 10_000
KNOWN_ACTIONS = frozenset({"notify", "dont_notify", "coalesce"})


def _invalid(message: str) -> MatrixError:
    return MatrixError(400, Codes.INVALID_PARAM, message)


def _bad_json(message: str) -> MatrixError:
    return MatrixError(400, Codes.BAD_JSON, message)


def rule_not_found() -> MatrixError:
    return MatrixError(404, Codes.NOT_FOUND, "The push rule was not found.")


# -- validation -----------------------------------------------------------------------------


def check_scope(scope: str) -> None:
    if scope != SCOPE:
        raise _invalid(f"Unknown push rule scope {scope!r}: only 'global' exists")


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise _invalid(f"Unknown push rule kind {kind!r}: expected one of {', '.join(KINDS)}")


def check_new_rule_id(kind: str, rule_id: str) -> None:
    """A rule ID a client may create under ``kind``."""
    if not rule_id:
        raise _invalid("The rule ID is empty")
    if rule_id.startswith("."):
        raise _invalid("Rule IDs starting with '.' are reserved for server-default rules")
    if "/" in rule_id or "\\" in rule_id:
        raise _invalid("Rule IDs may not contain slashes or backslashes")
    if len(rule_id.encode("utf-8")) > MAX_RULE_ID_BYTES:
        raise _invalid(f"The rule ID is longer than {MAX_RULE_ID_BYTES} bytes")
    if kind == "room" and not rule_id.startswith("!"):
        raise _invalid("The rule ID of a room rule is the ID of the room it applies to")
    if kind == "sender" and not rule_id.startswith("@"):
        raise _invalid("The rule ID of a sender rule is the user ID it applies to")


def _is_scalar(value: Any) -> bool:
    if value is None or isinstance(value, (str, bool)):
        return True
    return isinstance(value, int) and -MAX_SAFE_INT <= value <= MAX_SAFE_INT


def validate_actions(raw: Any) -> list[Any]:
    """The actions as stored: the historical ``dont_notify``/``coalesce`` dropped."""
    if not isinstance(raw, list):
        raise _bad_json("'actions' must be a list")
    if len(raw) > MAX_ACTIONS:
        raise _invalid(f"At most {MAX_ACTIONS} actions")
    out: list[Any] = []
    for action in raw:
        if isinstance(action, str):
            if action not in KNOWN_ACTIONS:
                raise _invalid(f"Unknown action {action!r}")
            if action == "notify":
                out.append(action)
        elif isinstance(action, dict):
            tweak = action.get("set_tweak")
            if not isinstance(tweak, str) or not tweak:
                raise _invalid("An action object must have a 'set_tweak' string")
            if set(action) - {"set_tweak", "value"}:
                raise _invalid(f"Unknown keys in action {action!r}")
            if tweak == "highlight" and "value" in action and not isinstance(
                action["value"], bool
            ):
                raise _invalid("The highlight tweak's value must be true or false")
            out.append(action)
        else:
            raise _bad_json("Each action must be a string or an object")
    return out


def validate_conditions(raw: Any) -> list[Any]:
    if not isinstance(raw, list):
        raise _bad_json("'conditions' must be a list")
    if len(raw) > MAX_CONDITIONS:
        raise _invalid(f"At most {MAX_CONDITIONS} conditions")
    for cond in raw:
        if not isinstance(cond, dict):
            raise _bad_json("Each condition must be an object")
        kind = cond.get("kind")
        if not isinstance(kind, str):
            raise _bad_json("Each condition must have a 'kind' string")
        key = cond.get("key")
        if kind == "event_match":
            if not isinstance(key, str) or not isinstance(cond.get("pattern"), str):
                raise _invalid("event_match needs a 'key' and a 'pattern' string")
            if len(cond["pattern"]) > MAX_PATTERN_CHARS:
                raise _invalid(f"Patterns are at most {MAX_PATTERN_CHARS} characters")
        elif kind in ("event_property_is", "event_property_contains"):
            if not isinstance(key, str):
                raise _invalid(f"{kind} needs a 'key' string")
            if "value" not in cond or not _is_scalar(cond["value"]):
                raise _invalid(
                    f"{kind} needs a 'value': a string, an integer, a boolean or null"
                )
        elif kind == "room_member_count":
            spec = cond.get("is")
            if not isinstance(spec, str) or parse_member_count(spec) is None:
                raise _invalid(
                    "room_member_count needs 'is': a number with an optional ==, <, >, <= "
                    "or >= prefix"
                )
        elif kind == "sender_notification_permission":
            if not isinstance(key, str):
                raise _invalid("sender_notification_permission needs a 'key' string")
        # contains_display_name has no parameters; unknown kinds are kept (they never match).
    return raw


@dataclass(frozen=True)
class NewRule:
    conditions: list[Any] | None
    pattern: str | None
    actions: list[Any]


def validate_rule_body(kind: str, body: dict[str, Any]) -> NewRule:
    if "actions" not in body:
        raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: actions")
    actions = validate_actions(body["actions"])
    conditions: list[Any] | None = None
    pattern: str | None = None
    if kind in ("override", "underride"):
        conditions = validate_conditions(body.get("conditions", []))
    elif kind == "content":
        if "pattern" not in body:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: pattern")
        if not isinstance(body["pattern"], str):
            raise _bad_json("'pattern' must be a string")
        pattern = body["pattern"]
        if not pattern or len(pattern) > MAX_PATTERN_CHARS:
            raise _invalid(f"'pattern' must be 1 to {MAX_PATTERN_CHARS} characters")
    return NewRule(conditions, pattern, actions)


# -- the ruleset ---------------------------------------------------------------------------------


def compose_ruleset(user_id: str, stored: UserRules, *, legacy: bool) -> dict[str, list[Rule]]:
    """kind -> rules in evaluation order, as GET /pushrules/global/ serves them."""
    defaults = default_rules(user_id, legacy=legacy)
    out: dict[str, list[Rule]] = {}
    for kind in KINDS:
        first, last = defaults[kind]
        own: list[Rule] = []
        for r in sorted(stored.rules, key=lambda r: -r.priority):
            if r.kind != kind:
                continue
            rule: Rule = {"rule_id": r.rule_id, "default": False, "enabled": r.enabled,
                          "actions": copy.deepcopy(r.actions)}
            if kind in ("override", "underride"):
                rule["conditions"] = copy.deepcopy(r.conditions or [])
            elif kind == "content":
                rule["pattern"] = r.pattern
            own.append(rule)
        rules = [*first, *own, *last]
        for rule in rules:
            setting = stored.defaults.get(rule["rule_id"]) if rule["default"] else None
            if setting is not None:
                if setting.enabled is not None:
                    rule["enabled"] = setting.enabled
                if setting.actions is not None:
                    rule["actions"] = copy.deepcopy(setting.actions)
        out[kind] = rules
    return out


def find_rule(ruleset: dict[str, list[Rule]], kind: str, rule_id: str) -> Rule:
    for rule in ruleset.get(kind, []):
        if rule["rule_id"] == rule_id:
            return rule
    raise rule_not_found()


class RuleCompiler:
    """Compiled rulesets per user without recompiling the server-default rules: those that do
    not name the user (most of them) are compiled once and shared by every user who has not
    changed them; the few that do, and the user's own rules, are compiled per user."""

    def __init__(self, legacy: bool) -> None:
        self.legacy = legacy
        self.legacy_ids = LEGACY_MENTION_RULES if legacy else frozenset()
        template = default_rules(_TEMPLATE_USER, legacy=legacy)
        self._defaults: dict[str, tuple[list[Rule], list[Rule]]] = template
        self._shared: dict[str, CompiledRule] = {}
        # Rules naming the user: compiled once, the conditions that name them redone per user.
        self._personal: dict[str, tuple[CompiledRule, list[tuple[int, Any]]]] = {}
        for kind, (first, last) in template.items():
            for rule in (*first, *last):
                compiled = compile_rule(rule, kind, self.legacy_ids)
                if not _names_user(rule):
                    self._shared[rule["rule_id"]] = compiled
                    continue
                raw = rule.get("conditions") or []
                if kind == "content":
                    raw = [{"kind": "event_match", "key": "content.body",
                            "pattern": rule["pattern"]}]
                personal = [(i, c) for i, c in enumerate(raw) if _names_user(c)]
                self._personal[rule["rule_id"]] = (compiled, personal)

    def _default(self, kind: str, rule: Rule, user_id: str,
                 setting: DefaultSetting | None) -> CompiledRule | None:
        enabled = rule["enabled"]
        if setting is not None and setting.enabled is not None:
            enabled = setting.enabled
        if not enabled:
            return None
        unchanged = setting is None or setting.actions is None
        shared = self._shared.get(rule["rule_id"])
        if shared is not None and unchanged:
            return shared
        personal = self._personal.get(rule["rule_id"])
        if personal is not None and unchanged:
            compiled, conditions = personal
            redone = list(compiled.conditions)
            for i, raw in conditions:
                redone[i] = compile_condition(fill_user(raw, user_id))
            return replace(compiled, conditions=tuple(redone))
        filled = fill_user(rule, user_id)
        if setting is not None and setting.actions is not None:
            filled["actions"] = setting.actions
        return compile_rule(filled, kind, self.legacy_ids)

    def compile(self, user_id: str, stored: UserRules) -> CompiledRuleset:
        own: dict[str, list[StoredRule]] = {}
        for r in sorted(stored.rules, key=lambda r: -r.priority):
            if r.enabled:
                own.setdefault(r.kind, []).append(r)
        by_kind: dict[str, list[CompiledRule]] = {}
        for kind in KINDS:
            first, last = self._defaults[kind]
            rules: list[CompiledRule] = []
            for rule in first:
                c = self._default(kind, rule, user_id, stored.defaults.get(rule["rule_id"]))
                if c is not None:
                    rules.append(c)
            for r in own.get(kind, ()):
                raw: Rule = {"rule_id": r.rule_id, "actions": r.actions,
                             "conditions": r.conditions or [], "pattern": r.pattern}
                rules.append(compile_rule(raw, kind, self.legacy_ids))
            for rule in last:
                c = self._default(kind, rule, user_id, stored.defaults.get(rule["rule_id"]))
                if c is not None:
                    rules.append(c)
            by_kind[kind] = rules
        return assemble(by_kind)


_TEMPLATE_USER = "@__push_template__:__template__"


def _names_user(value: Any) -> bool:
    """Whether a template rule mentions the template user (or their localpart)."""
    if isinstance(value, str):
        return "__push_template__" in value
    if isinstance(value, dict):
        return any(_names_user(v) for v in value.values())
    if isinstance(value, list):
        return any(_names_user(v) for v in value)
    return False


def fill_user(rule: Any, user_id: str) -> Any:
    """A template default rule (made for _TEMPLATE_USER) for ``user_id``."""
    localpart = user_id[1:].split(":", 1)[0]
    template_localpart = _TEMPLATE_USER[1:].split(":", 1)[0]

    def fill(value: Any) -> Any:
        if value == _TEMPLATE_USER:
            return user_id
        if value == template_localpart:
            return localpart
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    return fill(rule)


@dataclass(frozen=True)
class UserPushInfo:
    """What evaluating events for a user needs: their compiled rules and whom they ignore."""

    rules: CompiledRuleset
    ignored: frozenset[str]


class PushRules:
    def __init__(self, store: PushStore, account_data: AccountDataStore, clock: Clock,
                 *, legacy: bool = True, cache_size: int = 100_000) -> None:
        self.store = store
        self.db = store.db
        self.account_data = account_data
        self.clock = clock
        self.legacy = legacy
        self.default_ids = default_rule_ids(legacy=legacy)
        self.compiler = RuleCompiler(legacy)
        self._info: LruCache[str, UserPushInfo] = LruCache(cache_size, "push_rules")
        # Invalidation epochs, so that a load racing an invalidation is not cached.
        self._epoch = 0
        self._invalidated: LruCache[str, int] = LruCache(cache_size)
        self._locks: dict[str, tuple[defer.DeferredLock, int]] = {}
        self.db.on_commit.append(self._on_commit)

    # -- caching -----------------------------------------------------------------------------------
    def invalidate(self, user_id: str) -> None:
        self._epoch += 1
        self._info.pop(user_id)
        self._invalidated.set(user_id, self._epoch)

    def _on_commit(self, notes: list[StreamNote]) -> None:
        # Account data (the ignore list among it) changed for these users.
        for note in notes:
            if note.stream == "account_data":
                for user in note.users:
                    self.invalidate(user)

    async def info_for(self, user_ids: Sequence[str]) -> dict[str, UserPushInfo]:
        """Compiled rules and ignore lists, from the cache or loaded in one transaction."""
        out: dict[str, UserPushInfo] = {}
        missing: list[str] = []
        for u in user_ids:
            info = self._info.get(u)
            if info is None:
                missing.append(u)
            else:
                out[u] = info
        if not missing:
            return out
        started = self._epoch
        rules, ignored = await self.db.run("push_load_user_info", _load_info_txn, missing)
        for u in missing:
            info = UserPushInfo(self.compiler.compile(u, rules[u]),
                                ignored.get(u, frozenset()))
            out[u] = info
            if (self._invalidated.get(u) or -1) <= started:
                self._info.set(u, info)
        return out

    # -- reading -----------------------------------------------------------------------------------
    async def ruleset(self, user_id: str) -> dict[str, list[Rule]]:
        stored = (await self.store.load_rules([user_id]))[user_id]
        return compose_ruleset(user_id, stored, legacy=self.legacy)

    async def get_rule(self, user_id: str, kind: str, rule_id: str) -> Rule:
        check_kind(kind)
        return find_rule(await self.ruleset(user_id), kind, rule_id)

    # -- changing ----------------------------------------------------------------------------------
    @asynccontextmanager
    async def _changing(self, user_id: str) -> AsyncIterator[None]:
        """One change at a time per user; afterwards the cache is dropped and the new
        ruleset written to m.push_rules account data (which /sync sends to clients)."""
        lock, users = self._locks.get(user_id, (defer.DeferredLock(), 0))
        self._locks[user_id] = (lock, users + 1)
        try:
            await lock.acquire()
            try:
                yield
                self.invalidate(user_id)
                content = {"global": await self.ruleset(user_id)}
                await self.account_data.put(user_id, "", PUSH_RULES_TYPE, content)
            finally:
                lock.release()
        finally:
            lock, users = self._locks[user_id]
            if users <= 1:
                del self._locks[user_id]
            else:
                self._locks[user_id] = (lock, users - 1)

    def _default_kind(self, rule_id: str) -> str | None:
        return self.default_ids.get(rule_id)

    async def put_rule(self, user_id: str, kind: str, rule_id: str, body: dict[str, Any],
                       before: str | None, after: str | None) -> None:
        check_kind(kind)
        check_new_rule_id(kind, rule_id)
        rule = validate_rule_body(kind, body)
        for name, relative in (("before", before), ("after", after)):
            if relative is not None and relative.startswith("."):
                raise _invalid(f"'{name}' may not name a server-default rule")
        async with self._changing(user_id):
            stored = (await self.store.load_rules([user_id]))[user_id]
            exists = any(r.kind == kind and r.rule_id == rule_id for r in stored.rules)
            if not exists and len(stored.rules) >= MAX_USER_RULES:
                raise _invalid(f"At most {MAX_USER_RULES} push rules per user")
            try:
                await self.store.put_rule(user_id, kind, rule_id, rule.conditions,
                                          rule.pattern, rule.actions, before, after)
            except RuleNotFound as e:
                raise MatrixError(400, Codes.UNKNOWN,
                                  f"before/after rule not found: {e.args[0]}") from None

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> None:
        check_kind(kind)
        if self._default_kind(rule_id) == kind:
            raise _invalid("Server-default push rules cannot be deleted")
        async with self._changing(user_id):
            if not await self.store.delete_rule(user_id, kind, rule_id):
                raise rule_not_found()

    async def set_enabled(self, user_id: str, kind: str, rule_id: str, enabled: bool) -> None:
        check_kind(kind)
        is_default = self._default_kind(rule_id) == kind
        async with self._changing(user_id):
            if not await self.store.set_enabled(user_id, kind, rule_id, enabled,
                                                is_default=is_default):
                raise rule_not_found()

    async def set_actions(self, user_id: str, kind: str, rule_id: str, raw: Any) -> None:
        check_kind(kind)
        actions = validate_actions(raw)
        is_default = self._default_kind(rule_id) == kind
        async with self._changing(user_id):
            if not await self.store.set_actions(user_id, kind, rule_id, actions,
                                                is_default=is_default):
                raise rule_not_found()


    async def copy_room_rules(self, user_id: str, old_room: str, new_room: str) -> int:
        """After a room upgrade: copy the user's enabled rules about the old room (its room
        rule, override/underride rules matching its ID) to the new room, unless the new room
        has its own already. Returns how many were copied."""
        stored = (await self.store.load_rules([user_id]))[user_id]
        existing = {(r.kind, r.rule_id) for r in stored.rules}
        copies: list[tuple[str, str, list[Any] | None, list[Any]]] = []
        for r in sorted(stored.rules, key=lambda r: r.priority):
            if not r.enabled or r.kind not in ("room", "override", "underride"):
                continue
            about_room = r.kind == "room" and r.rule_id == old_room
            conditions = r.conditions
            if r.kind != "room":
                about_room = any(
                    isinstance(c, dict) and c.get("kind") == "event_match"
                    and c.get("key") == "room_id" and c.get("pattern") == old_room
                    for c in conditions or []
                )
                conditions = [
                    {**c, "pattern": new_room}
                    if isinstance(c, dict) and c.get("key") == "room_id"
                    and c.get("pattern") == old_room else c
                    for c in conditions or []
                ]
            if not about_room or old_room not in r.rule_id:
                continue
            new_id = r.rule_id.replace(old_room, new_room)
            if (r.kind, new_id) in existing:
                continue
            copies.append((r.kind, new_id, conditions, r.actions))
        if not copies:
            return 0
        async with self._changing(user_id):
            for kind, rule_id, conditions, actions in copies:
                await self.store.put_rule(user_id, kind, rule_id, conditions, None, actions,
                                          None, None)
        return len(copies)


def _load_info_txn(
    txn: Txn, user_ids: list[str]
) -> tuple[dict[str, UserRules], dict[str, frozenset[str]]]:
    import json

    rules = load_rules_txn(txn, user_ids)
    ignored: dict[str, frozenset[str]] = {}
    for i in range(0, len(user_ids), 500):
        chunk = user_ids[i : i + 500]
        rows = txn.execute(
            "SELECT user_id, content FROM account_data WHERE room_id = '' AND data_type = ?"
            f" AND user_id IN ({','.join('?' * len(chunk))})",
            (IGNORED_USERS_TYPE, *chunk),
        ).fetchall()
        for user_id, content in rows:
            try:
                parsed = json.loads(content).get("ignored_users")
            except (ValueError, AttributeError):
                continue
            if isinstance(parsed, dict):
                ignored[user_id] = frozenset(u for u in parsed if isinstance(u, str))
    return rules, ignored
