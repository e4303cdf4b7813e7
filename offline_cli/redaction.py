"""Keeping credentials out of logs, messages and the database: URL redaction."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Query parameters whose values are credentials in signed or tokenised URLs.
_SECRET_PARAM_RE = re.compile(
    r"token|key|sig|signature|secret|password|passwd|auth|credential|policy|session|jwt|hdnts",
    re.IGNORECASE,
)
REDACTED = "REDACTED"


def redact_url(url: str) -> str:
    """The URL with its user info and credential-like query values replaced by REDACTED.

    Logs, the database and product names only ever see this form.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_PARAM_RE.search(name) for name, _ in pairs):
            query = urlencode(
                [(n, REDACTED if _SECRET_PARAM_RE.search(n) else v) for n, v in pairs]
            )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_URL_IN_TEXT_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def scrub_urls(text: str) -> str:
    """``text`` with every URL in it redacted (for messages that quote a URL)."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT_RE.sub(lambda m: redact_url(m.group(0)), text)
