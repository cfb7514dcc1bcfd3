"""URLs in messages: what may be printed or stored of a URL that can carry credentials."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """The URL without its secrets: userinfo, query string and fragment are replaced by ``***``
    (``http://u:pw@host/p?token=abc`` -> ``http://***@host/p?***``)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if parts.username is not None or parts.password is not None:
        netloc = "***@" + (parts.hostname or "") + (f":{port}" if port else "")
    query = "***" if parts.query else ""
    fragment = "***" if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_text(text: str, url: str) -> str:
    """``text`` (an error message, say) with every copy of ``url``'s secrets replaced."""
    out = text.replace(url, redact_url(url))
    try:
        parts = urlsplit(url)
    except ValueError:
        return out
    for secret in (parts.query, parts.fragment, parts.password, parts.username):
        if secret:
            out = out.replace(secret, "***")
    return out
