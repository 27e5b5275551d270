"""The operator dashboard, served by `serve` on the admin listener (docs/dashboard.md).

Server-rendered pages (Jinja2) and one small script, no build step: the fleet page
(counts per state, failed and overdue nodes pinned, every server's health, the node table
filtered and paged on the server), a page per node, and the node actions with a
confirmation page each. Pages follow the admin event stream (an EventSource on
`/api/v1/events/stream`, authenticated by the session cookie) and re-render their live
part from the server when an event arrives, so there is one rendering path.
`install` mounts it on the admin application; pages.py has the routes.
"""

from plasmaboot.dashboard.pages import install

__all__ = ["install"]
