"""Credentials for authenticated sources: ``--header 'Name: value'`` and a bearer token.

They are sent to one origin only (scheme, host and port): the playback-info source's for a
product that came from it, the product URL's for a product given by URL. The HTTP client
(transfer.make_client) strips them from every request, each redirect hop included, and adds
them back only when the request goes to the origin the caller named in the request's
ORIGIN_EXTENSION. Their values never reach the database, the logs or a message: errors name
a header by its name (or its place on the command line), never by its value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from offline_cli.errors import UsageError

# The request extension that carries the trusted origin (httpx hands a request's extensions,
# the very dict, to each redirect request it builds, so every hop sees it).
ORIGIN_EXTENSION = "offline_cli_origin"
# Where the hook keeps what the request carried under the credentials' names before it
# touched them (a User-Agent or Accept of our own), to put back on a hop to another origin.
_ORIGINALS_EXTENSION = "offline_cli_uncredentialed"

TOKEN_ENV = "OFFLINE_CLI_TOKEN"

# RFC 9110 token: what a field name may be.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A field value we send: visible ASCII, spaces and tabs inside (no CR, LF, NUL, other
# controls, DEL or bytes beyond ASCII that servers read differently). Both are matched
# with fullmatch: ``$`` would let a final newline through.
_VALUE_RE = re.compile(r"[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?")
# Set by offline-cli or the HTTP client for each request: framing, connection management
# and the resume itself. A user value would break the transfer or smuggle a second request.
REFUSED_HEADERS: frozenset[str] = frozenset(
    name.lower()
    for name in (
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Upgrade",
        "Range",
        "If-Range",
        "Accept-Encoding",
    )
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str | None) -> str | None:
    """``scheme://host:port`` of an http(s) URL (host lower-case, default port written
    out), None when it has none: the unit credentials are trusted to."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return f"{scheme}://{host}:{port or _DEFAULT_PORTS[scheme]}"


def parse_header(text: str, where: str) -> tuple[str, str]:
    """``Name: value`` as (name, value), else UsageError. ``where`` says which header it is
    (``--header #2``): messages never quote the value, and quote the name only once it is
    known to be a token (text without a colon may well be a pasted secret)."""
    name, colon, value = text.partition(":")
    if not colon:
        raise UsageError(f"{where}: no colon", hint="write a header as 'Name: value'")
    name, value = name.strip(" \t"), value.strip(" \t")
    if not name:
        raise UsageError(f"{where}: empty header name", hint="write a header as 'Name: value'")
    if not _TOKEN_RE.fullmatch(name):
        raise UsageError(
            f"{where}: the header name is not an HTTP token",
            hint="a name is letters, digits and !#$%&'*+-.^_`|~ (no spaces or controls)",
        )
    if name.lower() in REFUSED_HEADERS:
        raise UsageError(f"{where}: {name} is set by offline-cli itself and cannot be given")
    if not value:
        raise UsageError(f"{where}: {name} has an empty value")
    if not _VALUE_RE.fullmatch(value):
        raise UsageError(
            f"{where}: the value of {name} holds control characters or non-ASCII bytes"
        )
    return name, value


def parse_headers(texts: Iterable[str], where: str) -> tuple[tuple[str, str], ...]:
    """Every header of one layer (config file, environment or command line), checked; the
    same name twice is refused rather than one of them silently dropped."""
    parsed: list[tuple[str, str]] = []
    seen: set[str] = set()
    for number, text in enumerate(texts, 1):
        name, value = parse_header(text, f"{where} #{number}")
        if name.lower() in seen:
            raise UsageError(f"{where} #{number}: {name} is given twice")
        seen.add(name.lower())
        parsed.append((name, value))
    return tuple(parsed)


def check_token(token: str, where: str) -> str:
    """A bearer token as read (surrounding whitespace dropped), else UsageError naming
    ``where`` (the variable or the file), never the token."""
    token = token.strip()
    if not token:
        raise UsageError(f"{where}: the token is empty")
    if not _VALUE_RE.fullmatch(token):
        raise UsageError(f"{where}: the token holds control characters or non-ASCII bytes")
    return token


@dataclass(frozen=True)
class RequestCredentials:
    """The headers sent to the trusted origin only. Its repr names the headers, never
    their values (it may end up in a traceback or a debugger's view)."""

    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def build(cls, headers: tuple[tuple[str, str], ...], token: str | None) -> RequestCredentials:
        """``headers`` plus ``Authorization: Bearer TOKEN`` unless a header already sets
        Authorization (an explicit header wins over the token)."""
        names = {name.lower() for name, _ in headers}
        if token is not None and "authorization" not in names:
            return cls((*headers, ("Authorization", f"Bearer {token}")))
        return cls(headers)

    def __bool__(self) -> bool:
        return bool(self.headers)

    def __repr__(self) -> str:
        names = ", ".join(name for name, _ in self.headers)
        return f"RequestCredentials(headers=[{names}], values hidden)"

    def apply(
        self,
        headers: MutableMapping[str, str],
        url: str,
        extensions: MutableMapping[str, object],
    ) -> None:
        """Make one request's ``headers`` right for ``url``: the credentials when its origin
        is the one ``extensions`` trusts, else what the request carried without them.

        Runs on every hop of a redirect (the hop to another host must lose custom headers
        too, which httpx does not do: it drops only Authorization).
        """
        originals = extensions.get(_ORIGINALS_EXTENSION)
        if not isinstance(originals, dict):
            # The first hop: remember the request's own values under these names.
            originals = {name: headers.get(name) for name, _ in self.headers}
            extensions[_ORIGINALS_EXTENSION] = originals
        trusted = extensions.get(ORIGIN_EXTENSION)
        if trusted is not None and origin_of(url) == trusted:
            for name, value in self.headers:
                headers[name] = value
            return
        for name, original in originals.items():
            if original is None:
                headers.pop(name, None)
            else:
                headers[name] = original
