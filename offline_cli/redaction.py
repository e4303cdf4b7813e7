"""What may reach a terminal, a log or the database: credentials hidden, controls escaped.

A URL product is named by its redacted URL (SPEC.md, "Product identity"), so redaction is
also identity: it hides the values of a fixed list of credential parameter names, matched
whole and case-insensitively, and keeps every other character of the URL as written. Two
URLs that differ anywhere but in those values therefore never get the same name.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

REDACTED = "REDACTED"

# Parameter names whose values are credentials, or the signature of a signed URL (so the
# same file behind two signed URLs is one product). Matched whole, case-insensitively,
# after percent-decoding. Generic names such as ``key``, ``id`` or ``expires`` are left out
# on purpose: they often name the file itself, and hiding them would merge two products.
# Keep README.md ("Credentials and product names") in step with this list.
CREDENTIAL_PARAMS: frozenset[str] = frozenset(
    name.lower()
    for name in (
        # bearer tokens, sessions and passwords
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "auth_token",
        "oauth_token",
        "private_token",
        "auth",
        "jwt",
        "code",
        "password",
        "passwd",
        "pwd",
        "pass",
        "secret",
        "client_secret",
        "api_key",
        "apikey",
        "api-key",
        "x-api-key",
        "session",
        "session_id",
        "sessionid",
        "session_token",
        "jsessionid",
        "phpsessid",
        # signatures: generic, CloudFront, Akamai, OAuth 1
        "sig",
        "signature",
        "hmac",
        "policy",
        "key-pair-id",
        "hdnts",
        "hdnea",
        "oauth_signature",
        # AWS S3 (SigV4 and v2) and Google Cloud Storage signed URLs
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-amz-date",
        "x-amz-expires",
        "x-amz-algorithm",
        "x-amz-signedheaders",
        "awsaccesskeyid",
        "x-goog-signature",
        "x-goog-credential",
        "x-goog-date",
        "x-goog-expires",
        "x-goog-algorithm",
        "x-goog-signedheaders",
        "googleaccessid",
    )
)

# RFC 3986, appendix B: splits any string into scheme, authority, path, query, fragment.
# It cannot fail, so no URL is ever printed unredacted because it did not parse.
_URL_PARTS_RE = re.compile(
    r"^(?P<scheme>[^:/?#]+:)?(?://(?P<authority>[^/?#]*))?"
    r"(?P<path>[^?#]*)(?:\?(?P<query>[^#]*))?(?:#(?P<fragment>.*))?$",
    re.DOTALL,
)
# Pairs in a query or fragment: ``&`` and ``;`` both separate (older servers split on ``;``).
_PAIR_SEPARATORS_RE = re.compile(r"([&;])")
# Browsers and urllib drop these inside URLs, so they must not hide a name from the list.
_IGNORED_IN_NAMES_RE = re.compile(r"[\t\r\n]")


def is_credential_name(name: str) -> bool:
    """True when a parameter written as ``name`` (raw, maybe percent-encoded) is a credential."""
    decoded = unquote_plus(_IGNORED_IN_NAMES_RE.sub("", name))
    return _IGNORED_IN_NAMES_RE.sub("", decoded).lower() in CREDENTIAL_PARAMS


def _redact_pair(pair: str) -> str:
    name, eq, _value = pair.partition("=")
    return f"{name}={REDACTED}" if eq and is_credential_name(name) else pair


def _redact_pairs(text: str) -> str:
    """``a=1&token=x;b=2`` with credential values hidden; separators and order kept."""
    return "".join(_redact_pair(piece) for piece in _PAIR_SEPARATORS_RE.split(text))


def _redact_path(path: str) -> str:
    """Credentials in path parameters (``/file.mp4;token=x``) hidden, segments kept."""
    if ";" not in path:
        return path
    segments = []
    for segment in path.split("/"):
        first, *params = segment.split(";")
        segments.append(";".join([first, *(_redact_pair(p) for p in params)]))
    return "/".join(segments)


def redact_url(url: str) -> str:
    """The URL with its user info and the values of credential parameters replaced.

    Logs, messages, the database and product names only ever see this form. Parameters in
    the query, in path segments (``;name=value``) and in the fragment are all redacted.
    """
    match = _URL_PARTS_RE.match(url)
    assert match is not None  # the pattern matches every string
    scheme, authority, path, query, fragment = match.group(
        "scheme", "authority", "path", "query", "fragment"
    )
    out = scheme or ""
    if authority is not None:
        if "@" in authority:
            authority = f"{REDACTED}@{authority.rsplit('@', 1)[1]}"
        out += f"//{authority}"
    if not authority:
        path = _redact_stray_user_info(path)
    out += _redact_path(path)
    if query is not None:
        out += f"?{_redact_pairs(query)}"
    if fragment is not None:
        out += f"#{_redact_pairs(fragment)}"
    return out


# The slashes (either way round) that a mistyped URL puts between its scheme and user info.
_LEADING_SLASHES_RE = re.compile(r"^[/\\]*")


def _redact_stray_user_info(path: str) -> str:
    """``path`` with everything before its last ``@`` hidden, when there is no authority.

    Only a string that is not a well-formed URL gets here (an http(s) URL that check_url
    accepts always has a host), such as ``http:/\\u:pw@host`` or ``u:pw@host/f``: a refusal
    message quotes it, and what precedes the ``@`` may be a password. Product names never
    change, since no accepted URL takes this path.
    """
    if "@" not in path:
        return path
    slashes = _LEADING_SLASHES_RE.match(path)
    assert slashes is not None  # the pattern matches every string
    start = slashes.end()
    return f"{path[:start]}{REDACTED}@{path[start:].rsplit('@', 1)[1]}"


_URL_IN_TEXT_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def scrub_urls(text: str) -> str:
    """``text`` with every URL in it redacted (for messages that quote a URL)."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT_RE.sub(lambda m: redact_url(m.group(0)), text)


# C0 controls, DEL and C1 controls (a terminal acts on them: ESC starts an escape sequence,
# and U+009B is a one-character CSI), plus the Unicode line separators and the bidi
# overrides that make text read differently from what it is. Also lone surrogates: Python
# decodes a byte that is not UTF-8 (in argv, the environment, a JSON ``\\ud800``) to one, and
# it cannot be encoded again, so the database, a file name or the terminal would fail on it.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def escape_controls(text: str, keep: str = "") -> str:
    """``text`` safe to print: each control character written as ``\\xNN`` or ``\\uNNNN``.

    Names, server answers and error messages may carry bytes chosen by someone else; printed
    raw they could move the cursor, rewrite earlier lines or retitle the terminal. ``keep``
    lists controls the caller writes on purpose (the tab of tab-separated output).
    """

    def escape(match: re.Match[str]) -> str:
        char = match.group(0)
        if char in keep:
            return char
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _CONTROL_RE.sub(escape, text)


def has_controls(text: str) -> bool:
    """True when ``text`` holds a character that ``escape_controls`` would escape."""
    return _CONTROL_RE.search(text) is not None


def redact_refused(text: str) -> str:
    """Refused input as an error message may quote it: redacted, and everything between the
    scheme and the last ``@`` hidden too. A password holding ``/``, ``?`` or ``#`` ends the
    authority early (``http://u:pa/ss@host``), so no parse finds it; refused text names no
    product, so hiding a little too much costs nothing."""
    shown = redact_url(text)
    scheme, separator, rest = shown.partition("://")
    prefix = scheme + separator if separator else ""
    rest = rest if separator else shown
    if "@" in rest:
        rest = REDACTED + rest[rest.rindex("@") :]
    return prefix + rest
