"""Keeping node records current from the event log, for readers that hold them in memory
(the dashboard's node index, the DHCP server's node view).

Every change to a node records an event of that node (transitions, inventory imports,
discoveries), and events commit in id order (`Store.events_page`), so a reader that reads
the events after its cursor and re-reads the nodes they name misses nothing, whichever
server or command made the change. It reads when its watch on "events" wakes
(changes.py). A discovered record that an inventory import turns into a node, or folds
into one (`node adopt`, `node replace`), leaves no event of its own: the import's event
names it in `discovered_as`, and it is read again too (gone, so it leaves the view).
"""

from __future__ import annotations

from typing import Any

from plasmaboot.store.base import Store

EVENTS_PAGE = 1000  # events per read while catching up with the event log
REREAD_ALL = 1000  # more changed nodes than this in one catch-up: read every node at once


def changed_nodes(store: Store, cursor: int) -> tuple[set[str], int]:
    """The nodes named by the events after id `cursor`, and the newest id read."""
    changed: set[str] = set()
    while True:
        page = store.events_page(cursor, EVENTS_PAGE)
        for event in page:
            changed.add(event.node)
            changed.update(_folded(event.detail.get("discovered_as")))
        if page:
            cursor = page[-1].id
        if len(page) < EVENTS_PAGE:
            return changed, cursor


def _folded(names: Any) -> list[str]:
    """`discovered_as` of an import's event: one name (adopted) or a list (folded in)."""
    if isinstance(names, str):
        return [names]
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
