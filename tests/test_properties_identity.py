"""Property tests for what faces the outside in product identity: URLs, product names,
redaction and the printing of untrusted text.

The key properties: two URLs get one product name exactly when they differ only in
credentials (user info, values of the listed parameter names), and no listed credential
value ever survives redaction.
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from offline_cli.errors import UsageError
from offline_cli.models import MediaProduct, ProductType, check_url, parse_product_name
from offline_cli.redaction import (
    CREDENTIAL_PARAMS,
    REDACTED,
    escape_controls,
    has_controls,
    is_credential_name,
    redact_url,
    scrub_urls,
)

# Names that merely contain a credential word, or look like one: all part of the identity.
LOOKALIKES = [
    "keyword",
    "author",
    "design",
    "monkey",
    "passage",
    "tokens",
    "mytoken",
    "key",
    "id",
    "expires",
    "codec",
    "signed",
    "x-amz-meta",
    "q",
]
CREDENTIALS = sorted(CREDENTIAL_PARAMS)

# Credential values are digits and ``~``; nothing else in a generated URL holds either, so a
# digit in the redacted URL is a leaked credential.
SECRET_ALPHABET = string.digits + "~"
PLAIN_ALPHABET = string.ascii_lowercase + "-._%+"
assert not any(c in name for name in CREDENTIALS for c in SECRET_ALPHABET)
assert not any(c in REDACTED for c in SECRET_ALPHABET)


def _random_case(name: str, flips: list[bool]) -> str:
    padded = flips + [False] * (len(name) - len(flips))
    return "".join(c.upper() if f else c for c, f in zip(name, padded, strict=True))


@st.composite
def credential_names(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(CREDENTIALS))
    return _random_case(name, draw(st.lists(st.booleans(), max_size=len(name))))


plain_names = st.one_of(
    st.sampled_from(LOOKALIKES), st.text(PLAIN_ALPHABET, min_size=1, max_size=6)
).filter(lambda n: not is_credential_name(n))
plain_values = st.text(PLAIN_ALPHABET, max_size=5)
secret_values = st.text(SECRET_ALPHABET, max_size=6)


@dataclass(frozen=True)
class Pair:
    name: str
    value: str | None  # None: written without ``=``
    secret: bool

    def text(self) -> str:
        return self.name if self.value is None else f"{self.name}={self.value}"

    def identity(self) -> tuple[str, str | None]:
        # What makes a product: the name as written, the value unless it is a credential.
        if self.secret and self.value is not None:
            return (self.name, REDACTED)
        return (self.name, self.value)


@st.composite
def pairs(draw: st.DrawFn) -> Pair:
    if draw(st.booleans()):
        return Pair(draw(credential_names()), draw(secret_values), True)
    value = draw(st.one_of(st.none(), plain_values))
    return Pair(draw(plain_names), value, False)


@dataclass(frozen=True)
class Url:
    scheme: str
    userinfo: str | None
    host: str
    segments: tuple[tuple[str, tuple[Pair, ...]], ...]  # path segment and its ;params
    query: tuple[tuple[str, Pair], ...] | None  # separator before each pair, and the pair
    fragment: tuple[tuple[str, Pair], ...] | None

    def text(self) -> str:
        out = f"{self.scheme}://"
        if self.userinfo is not None:
            out += f"{self.userinfo}@"
        out += self.host
        for segment, params in self.segments:
            out += "/" + ";".join([segment, *(p.text() for p in params)])
        if self.query is not None:
            out += "?" + "".join(sep + p.text() for sep, p in self.query)[1:]
        if self.fragment is not None:
            out += "#" + "".join(sep + p.text() for sep, p in self.fragment)[1:]
        return out

    def identity(self) -> object:
        """Everything but credentials: the independent model of SPEC's identity rule."""

        def listed(items: tuple[tuple[str, Pair], ...] | None) -> object:
            if items is None:
                return None
            return tuple((i > 0 and sep, p.identity()) for i, (sep, p) in enumerate(items))

        return (
            self.scheme,
            self.userinfo is not None,
            self.host,
            tuple((s, tuple(p.identity() for p in params)) for s, params in self.segments),
            listed(self.query),
            listed(self.fragment),
        )


separated_pairs = st.lists(st.tuples(st.sampled_from("&;"), pairs()), min_size=1, max_size=4)


@st.composite
def urls(draw: st.DrawFn) -> Url:
    return Url(
        scheme=draw(st.sampled_from(["http", "https"])),
        userinfo=draw(st.one_of(st.none(), secret_values.map(lambda s: f"u{s}:{s}"))),
        host=draw(st.sampled_from(["cdn.example.com", "h", "cdn.example.org"])),
        segments=tuple(
            draw(
                st.lists(
                    st.tuples(
                        st.sampled_from(["media.mov", "v", "export", ""]),
                        st.lists(pairs(), max_size=2).map(tuple),
                    ),
                    max_size=3,
                )
            )
        ),
        query=draw(st.one_of(st.none(), separated_pairs.map(tuple))),
        fragment=draw(st.one_of(st.none(), separated_pairs.map(tuple))),
    )


# -- identity ---------------------------------------------------------------------------------


@settings(max_examples=400)
@given(urls(), urls())
def test_two_urls_share_a_name_exactly_when_they_differ_only_in_credentials(a: Url, b: Url) -> None:
    assert (redact_url(a.text()) == redact_url(b.text())) == (a.identity() == b.identity())


@settings(max_examples=300)
@given(urls(), st.data())
def test_changing_anything_but_a_credential_changes_the_name(url: Url, data: st.DataObject) -> None:
    """The pairwise property above rarely draws near misses; this one makes them."""
    where = data.draw(st.sampled_from(["query", "fragment"]))
    items = getattr(url, where)
    assume(items is not None)
    plain = [i for i, (_, pair) in enumerate(items) if not pair.secret]
    assume(plain)
    index = data.draw(st.sampled_from(plain))
    sep, victim = items[index]
    other = data.draw(plain_values.filter(lambda v: v != victim.value))
    changed_items = (*items[:index], (sep, Pair(victim.name, other, False)), *items[index + 1 :])
    changed = dataclasses.replace(url, **{where: changed_items})
    assert redact_url(changed.text()) != redact_url(url.text())


@settings(max_examples=300)
@given(urls())
def test_no_credential_value_survives_redaction(url: Url) -> None:
    redacted = redact_url(url.text())
    assert not any(c in redacted for c in SECRET_ALPHABET), (url.text(), redacted)
    assert not any(c in scrub_urls(f"failed: {url.text()} (x)") for c in SECRET_ALPHABET)
    assert MediaProduct.from_url(url.text()).key == redacted


# Mistyped URLs that a refusal message quotes, each with a password ({pw}) in its user info:
# a space in it, one slash or a backslash after the scheme, no scheme at all (attack report 5).
MALFORMED_WITH_USER_INFO = [
    "http://u:{pw}{gap}{pw}@h/f",
    "http:/\\u:{pw}@h/f",
    "http:\\\\u:{pw}@h/f",
    "http:///u:{pw}@h/f",
    "https:u:{pw}@h/f",
    "u:{pw}@h/f",
    "u:{pw}{gap}@h",
    "//u:{pw}@h/f",
]


@given(
    st.sampled_from(MALFORMED_WITH_USER_INFO),
    secret_values.filter(bool),
    # Not "/": ``http://u:0/0@h/f`` is a well-formed URL (host u, port 0), named as written.
    st.sampled_from([" ", "\t", "  ", "\\"]),
)
def test_user_info_is_hidden_even_when_the_url_is_not_well_formed(
    shape: str, password: str, gap: str
) -> None:
    text = shape.format(pw=password, gap=gap)
    assert not any(c in redact_url(text) for c in SECRET_ALPHABET), (text, redact_url(text))
    assert redact_url(redact_url(text)) == redact_url(text)
    for check in (check_url, parse_product_name):
        try:
            check(text)  # ``http://u:0\\0@h/f`` is a URL (host h): its name is redacted
        except UsageError as refused:
            message = str(refused).replace("UTF-8", "")  # the one digit a message holds
            assert not any(c in message for c in SECRET_ALPHABET), message


@given(st.text())
def test_redaction_is_total_and_idempotent(text: str) -> None:
    once = redact_url(text)
    assert redact_url(once) == once
    assert scrub_urls(scrub_urls(text)) == scrub_urls(text)


@given(st.text(PLAIN_ALPHABET + "/?#&;=:@", max_size=40))
def test_text_without_credentials_is_kept_byte_for_byte(text: str) -> None:
    assume("@" not in text)
    assume(not any(is_credential_name(p) for p in text.replace("=", "&").split("&")))
    assume(not any(n in text.lower() for n in CREDENTIALS))
    assert redact_url(text) == text


@given(credential_names(), st.text(min_size=1).filter(lambda v: not set(v) & set("&;#")))
def test_credential_names_match_whole_and_in_any_case(name: str, value: str) -> None:
    assert is_credential_name(name)
    assert redact_url(f"https://h/a?{name}={value}") == f"https://h/a?{name}={REDACTED}"
    assert not is_credential_name(f"{name}x") or f"{name}x".lower() in CREDENTIAL_PARAMS
    assert not is_credential_name(f"x{name}") or f"x{name}".lower() in CREDENTIAL_PARAMS


# -- input checks and printing ---------------------------------------------------------------


@given(st.text(max_size=60))
def test_check_url_accepts_or_refuses_with_usage_error(text: str) -> None:
    try:
        checked = check_url(text)
    except UsageError as exc:
        assert not has_controls(str(exc))
        return
    assert checked == text
    assert not has_controls(text)
    assert text.lower().startswith(("http://", "https://"))


@given(
    st.sampled_from(["http://h/", "https://cdn.example.com/a?x="]),
    st.characters(min_codepoint=0, max_codepoint=0x9F).filter(
        lambda c: ord(c) < 0x20 or ord(c) >= 0x7F
    ),
)
def test_check_url_refuses_every_c0_c1_and_del(prefix: str, control: str) -> None:
    with pytest.raises(UsageError):
        check_url(f"{prefix}{control}x")


@given(st.text(max_size=60))
def test_product_names_parse_or_refuse(text: str) -> None:
    try:
        product_type, product_id = parse_product_name(text)
    except UsageError as exc:
        assert not has_controls(str(exc))
        return
    assert isinstance(product_type, ProductType)
    assert f"{product_type.value}:{product_id}" == text
    assert MediaProduct(product_type, product_id).key == text


@given(st.text())
def test_escaped_text_has_no_controls_and_plain_text_is_unchanged(text: str) -> None:
    escaped = escape_controls(text)
    assert not has_controls(escaped)
    if not has_controls(text):
        assert escaped == text
    assert escape_controls(text, keep="\t").count("\t") == text.count("\t")
