"""URLs, normalised so that two spellings of one address are one signal.

Normalisation follows RFC 3986 section 6.2.2 (syntax-based normalisation),
plus what is safe for http(s) addresses:

- surrounding ASCII whitespace is stripped; control characters are refused;
- the scheme must be ``http`` or ``https``. A value without a scheme
  (``example.com/x``) is refused, not completed with ``http://``: the scheme
  is part of the address (``http://`` and ``https://`` are two records), and
  a guessed scheme would store an address no member saw, so two members
  sharing the same content could land on different records depending on
  whether their tooling guessed;
- scheme and host are lower-cased; a non-ASCII host is IDNA-encoded (the
  stdlib ``idna`` codec); an IPv6 literal is written in its compressed form;
- userinfo (``user:password@``) and the fragment are dropped; so is the port
  when it is the scheme's default (80 for http, 443 for https), and an empty
  query (a bare ``?``);
- percent-encoding is normalised: escapes are upper-cased, escapes of
  unreserved characters (``A-Z a-z 0-9 - . _ ~``) are decoded, and characters
  a URI may not hold literally (non-ASCII, space, ``"<>\\^`{|}``...) are
  percent-encoded as UTF-8; a ``%`` not followed by two hex digits is refused;
- dot segments are removed from the path and an empty path becomes ``/``;
- the query is kept as given, in its order (only its escapes normalised).

The canonical value is ASCII and at most 4096 characters.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import quote, unquote, urlsplit

from federation.protocol.problems import HashfedError
from federation.protocol.signals.base import (
    ASCII_WHITESPACE,
    CONTROL_CHARACTER,
    SignalType,
    common_refusal,
    invalid_signal,
    show_value,
)

MAX_URL_CHARS = 4096
DEFAULT_PORTS = {"http": 80, "https": 443}

_EXPECTED = "an absolute http:// or https:// URL"
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Characters a path may hold literally besides unreserved ones (RFC 3986
# pchar and "/"); "%" because escapes are already normalised when quoting.
_PATH_SAFE = "!$&'()*+,;=:@/%"
_QUERY_SAFE = _PATH_SAFE + "?"
_HOST_NAME = re.compile(r"(?:[a-z0-9_-]+\.)*[a-z0-9_-]+\.?")


def normalize_url(value: str) -> str:
    """The canonical form of an http(s) URL; see the module docstring for the rules."""
    if not isinstance(value, str):
        raise _refusal(value)
    text = value.strip(ASCII_WHITESPACE)
    # Before urlsplit, which silently deletes tabs and line breaks.
    if not text or len(text) > MAX_URL_CHARS or CONTROL_CHARACTER.search(text):
        raise _refusal(value)
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise invalid_signal("url", f"is not a valid URL ({exc}); expected {_EXPECTED}") from None
    scheme = parts.scheme  # urlsplit lower-cases it
    if scheme not in DEFAULT_PORTS:
        raise _scheme_refusal(scheme, text)
    authority = _normalize_authority(scheme, parts.netloc)
    path = _remove_dot_segments(_normalize_component(parts.path, _PATH_SAFE, "path") or "/")
    query = _normalize_component(parts.query, _QUERY_SAFE, "query")
    normalized = (
        f"{scheme}://{authority}{path}?{query}" if query else f"{scheme}://{authority}{path}"
    )
    if len(normalized) > MAX_URL_CHARS:
        raise invalid_signal(
            "url",
            f"is too long once normalised ({len(normalized)} characters); "
            f"at most {MAX_URL_CHARS} are allowed",
        )
    return normalized


def _refusal(value: object) -> HashfedError:
    expected = f"{_EXPECTED} of at most {MAX_URL_CHARS} characters"
    error, _, _ = common_refusal("url", value, MAX_URL_CHARS, expected)
    return error if error is not None else invalid_signal("url", f"must be {_EXPECTED}")


def _scheme_refusal(scheme: str, text: str) -> HashfedError:
    if not scheme:
        return invalid_signal(
            "url",
            f"has no scheme: {show_value(text)}; expected {_EXPECTED} "
            "(write http:// or https:// explicitly)",
        )
    return invalid_signal("url", f"has the scheme {show_value(scheme)}; expected {_EXPECTED}")


def _normalize_authority(scheme: str, netloc: str) -> str:
    """``host[:port]`` of ``netloc``: userinfo dropped, host canonical, default port dropped."""
    host_port = netloc.rpartition("@")[2]
    if host_port.startswith("["):
        end = host_port.find("]")
        # urlsplit has already refused an unclosed "[".
        host = _normalize_ipv6(host_port[1:end])
        rest = host_port[end + 1 :]
        if rest and not rest.startswith(":"):
            raise invalid_signal(
                "url", f"has {show_value(rest)} after its IPv6 host; expected ':port' or nothing"
            )
        port = rest[1:]
    else:
        host, _, port = host_port.partition(":")
        if ":" in port:
            raise invalid_signal(
                "url",
                f"has the authority {show_value(host_port)}; expected host or host:port "
                "(an IPv6 address goes in brackets, e.g. http://[2001:db8::1]/)",
            )
        host = _normalize_host_name(host)
    if not port:
        return host
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) <= 65535:
        raise invalid_signal(
            "url", f"has the port {show_value(port)}; expected a number from 1 to 65535"
        )
    number = int(port)
    return host if number == DEFAULT_PORTS[scheme] else f"{host}:{number}"


def _normalize_ipv6(literal: str) -> str:
    try:
        if "%" in literal:  # a zone id names an interface of one machine
            raise ValueError(literal)
        address = ipaddress.IPv6Address(literal)
    except ValueError:
        raise invalid_signal(
            "url", f"has the host [{literal}], which is not a valid IPv6 address"
        ) from None
    return f"[{address.compressed}]"


def _normalize_host_name(host: str) -> str:
    if not host:
        raise invalid_signal(
            "url", f"has no host; expected {_EXPECTED} such as http://example.com/"
        )
    if "%" in host:
        host = _decode_host_escapes(host)
    host = host.lower()
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise invalid_signal(
                "url", f"has the host {show_value(host)}, which cannot be IDNA-encoded ({exc})"
            ) from None
    if _HOST_NAME.fullmatch(host) is None:
        raise invalid_signal(
            "url",
            f"has the host {show_value(host)}, which is not a valid host name "
            "(dot-separated labels of letters, digits, '-' and '_')",
        )
    return host


def _decode_host_escapes(host: str) -> str:
    stray = _STRAY_PERCENT.search(host)
    if stray is not None:
        raise _stray_percent_refusal("host", host, stray.start())
    try:
        return unquote(host, errors="strict")
    except UnicodeDecodeError:
        raise invalid_signal(
            "url", f"has the host {show_value(host)}, whose escapes are not valid UTF-8"
        ) from None


def _normalize_component(component: str, safe: str, where: str) -> str:
    """``component`` with escapes normalised and disallowed characters percent-encoded."""
    if "%" in component:
        stray = _STRAY_PERCENT.search(component)
        if stray is not None:
            raise _stray_percent_refusal(where, component, stray.start())
        component = _ESCAPE.sub(_normalize_escape, component)
    try:
        return quote(component, safe=safe)
    except UnicodeEncodeError:
        raise invalid_signal(
            "url", f"has a {where} with an unpaired surrogate character; expected valid Unicode"
        ) from None


def _normalize_escape(match: re.Match[str]) -> str:
    character = chr(int(match[1], 16))
    return character if character in _UNRESERVED else "%" + match[1].upper()


def _stray_percent_refusal(where: str, component: str, index: int) -> HashfedError:
    return invalid_signal(
        "url",
        f"has a '%' not followed by two hexadecimal digits in its {where} "
        f"({show_value(component[index : index + 3])}); write a literal '%' as '%25'",
    )


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 for an absolute path: resolve ``.`` and ``..`` segments."""
    if "." not in path:
        return path
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    if segments[-1] in (".", ".."):
        kept.append("")  # "/a/b/.." is the directory "/a/", trailing slash kept
    return "/" + "/".join(kept)


URL = SignalType(
    name="url",
    normalize=normalize_url,
    description="http(s) URL, normalised (RFC 3986 syntax-based normalisation)",
)

SIGNAL_TYPES: tuple[SignalType, ...] = (URL,)
