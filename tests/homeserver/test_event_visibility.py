"""The history visibility rules as a pure function."""

from __future__ import annotations

import pytest

from federation.events import Event
from federation.room_versions import get_room_version
from homeserver.services.visibility import is_event_visible

RV = get_room_version("10")
BOB = "@bob:x"


def ev(type_: str = "m.room.message", state_key: str | None = None,
       content: dict[str, object] | None = None) -> Event:
    pdu: dict[str, object] = {"type": type_, "sender": "@alice:x", "room_id": "!r:x",
                              "content": content or {}}
    if state_key is not None:
        pdu["state_key"] = state_key
    return Event(pdu, RV, "$e")


@pytest.mark.parametrize(
    ("visibility", "membership", "joined_now", "visible"),
    [
        # world_readable: everyone, even people who never joined.
        ("world_readable", None, False, True),
        ("world_readable", "leave", False, True),
        # joined at the event: always, whatever the setting and whether still joined.
        ("joined", "join", False, True),
        ("invited", "join", False, True),
        ("shared", "join", False, True),
        # shared: members see everything -- but only while they are members.
        ("shared", None, True, True),
        ("shared", "leave", True, True),
        ("shared", None, False, False),
        ("shared", "leave", False, False),
        # invited: from the invite on.
        ("invited", "invite", False, True),
        ("invited", None, True, False),
        ("invited", "leave", True, False),
        # joined: only while joined at the time.
        ("joined", "invite", True, False),
        ("joined", None, True, False),
        ("joined", "ban", False, False),
        # Unknown values are as strict as joined; absence means shared.
        ("something_else", None, True, False),
        (None, None, True, True),
        (None, None, False, False),
    ],
)
def test_rules(visibility: str | None, membership: str | None, joined_now: bool,
               visible: bool) -> None:
    assert is_event_visible(
        ev(), BOB, visibility=visibility, membership=membership, currently_joined=joined_now
    ) is visible


def test_history_visibility_event_uses_the_less_restrictive_value() -> None:
    change = ev("m.room.history_visibility", "", {"history_visibility": "world_readable"})
    # Opening up the room: the change itself is visible to outsiders...
    assert is_event_visible(change, BOB, visibility="world_readable", membership=None,
                            currently_joined=False, prev_visibility="joined")
    # ...and closing it: the change is still visible under the old, open value.
    closing = ev("m.room.history_visibility", "", {"history_visibility": "joined"})
    assert is_event_visible(closing, BOB, visibility="joined", membership=None,
                            currently_joined=False, prev_visibility="world_readable")
    assert not is_event_visible(closing, BOB, visibility="joined", membership=None,
                                currently_joined=False, prev_visibility="shared")


def test_own_membership_events() -> None:
    leave = ev("m.room.member", BOB, {"membership": "leave"})
    # One sees one's own leave after a join or an invite (e.g. a rejected invite).
    assert is_event_visible(leave, BOB, visibility="joined", membership="leave",
                            currently_joined=False, prev_membership="join")
    assert is_event_visible(leave, BOB, visibility="joined", membership="leave",
                            currently_joined=False, prev_membership="invite")
    # The join itself counts as joined.
    join = ev("m.room.member", BOB, {"membership": "join"})
    assert is_event_visible(join, BOB, visibility="joined", membership="join",
                            currently_joined=False, prev_membership="invite")
    # A ban after a join is seen as of the "more joined" side.
    ban = ev("m.room.member", BOB, {"membership": "ban"})
    assert is_event_visible(ban, BOB, visibility="joined", membership="ban",
                            currently_joined=False, prev_membership="join")
    # Someone else's leave, when one was never in the room, is not visible.
    other = ev("m.room.member", "@carol:x", {"membership": "leave"})
    assert not is_event_visible(other, BOB, visibility="joined", membership=None,
                                currently_joined=False)
