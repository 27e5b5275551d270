"""Where a store lives: a PostgreSQL URL, or a state directory (SQLite), and how to name
it in a message without its password."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DATABASE_SCHEMES = ("postgresql://", "postgres://")
HIDDEN = "***"


def is_database_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.lower().startswith(DATABASE_SCHEMES)


def url_password(url: str) -> str | None:
    """The password in a URL (userinfo or `?password=`), if it carries one; read without
    a URL parser, so it is found in a URL too broken to parse."""
    rest = url.partition("://")[2]
    userinfo, at, _ = rest.rpartition("@")
    if at and "/" not in userinfo and ":" in userinfo:
        return userinfo.partition(":")[2]
    for pair in rest.partition("?")[2].split("&"):
        key, _, value = pair.partition("=")
        if key == "password":
            return value
    return None


def redact_url(url: str) -> str:
    """The URL with its password (userinfo or `?password=`) replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not even a URL: show the scheme only, it may hold anything
        return url.partition("://")[0] + f"://{HIDDEN} (not a valid URL)"
    userinfo, at, hosts = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:{HIDDEN}@{hosts}"
    query = "&".join(
        f"password={HIDDEN}" if pair.partition("=")[0] == "password" else pair
        for pair in parts.query.split("&")
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def hide_password(text: str, url: str) -> str:
    """`text` (a driver's error) with the URL's password hidden, should it appear."""
    text = text.replace(url, redact_url(url))
    password = url_password(url)
    if password and len(password) >= 4:  # a shorter one would garble the text
        text = text.replace(password, HIDDEN)
    return text
