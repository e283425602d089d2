"""RFC 9421 HTTP Message Signatures (ed25519) and RFC 9530 Content-Digest (sha-256).

Pure functions shared by the server middleware and the client: they take the
parts of a request as plain values, never touch the network, and raise
:class:`HashfedError` with a precise message on any refusal.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from federation.protocol.problems import HashfedError, Problem

SIGNATURE_LABEL = "sig1"
SIGNATURE_ALGORITHM = "ed25519"
DIGEST_COMPONENT = "content-digest"
REQUIRED_COMPONENTS: tuple[str, ...] = ("@method", "@authority", "@path", "@query")
# Bounds on what an unauthenticated peer can make us parse.
MAX_HEADER_BYTES = 8192
MAX_COMPONENTS = 32
ED25519_SIGNATURE_BYTES = 64
# Order of parameters on signatures we create; received ones keep their own.
_PARAM_ORDER = ("created", "expires", "nonce", "keyid", "alg")
_INT_PARAMS = frozenset({"created", "expires"})

_KEY_RE = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_TOKEN_RE = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_INTEGER_RE = re.compile(r"-?[0-9]{1,15}(?![0-9.])")  # no decimals here
_STRING_RE = re.compile(r'"((?:[ !#-\[\]-~]|\\["\\])*)"')  # printable ASCII, \" and \\ only
_BYTES_RE = re.compile(r":([A-Za-z0-9+/]*={0,2}):")
_BOOLEAN_RE = re.compile(r"\?[01]")
# A derived component (@name) or a lower-cased field name (RFC 9110 token).
_COMPONENT_RE = re.compile(r"@?[a-z0-9!#$%&'*+\-.^_`|~]+")


@dataclass(frozen=True)
class RequestParts:
    """What a signature covers, taken from the request as sent."""

    method: str
    authority: str
    path: str
    query: str
    headers: Mapping[str, str]
    scheme: str = "https"


@dataclass(frozen=True)
class SignatureParams:
    """One signature's covered components and parameters (a Signature-Input entry)."""

    components: tuple[str, ...]
    created: int | None
    keyid: str | None
    nonce: str | None = None
    alg: str | None = None
    expires: int | None = None
    label: str = SIGNATURE_LABEL
    # Parameter order as received: the base must reproduce the signer's bytes.
    param_order: tuple[str, ...] = ()

    def serialize(self) -> str:
        """The RFC 8941 inner list used as @signature-params and in Signature-Input."""
        values: dict[str, int | str | None] = {k: getattr(self, k) for k in _PARAM_ORDER}
        order = self.param_order + tuple(k for k in _PARAM_ORDER if k not in self.param_order)
        out = ["(" + " ".join(_sf_string(c) for c in self.components) + ")"]
        for key in order:
            value = values.get(key)
            if isinstance(value, int):
                out.append(f";{key}={value}")
            elif value is not None:
                out.append(f";{key}={_sf_string(value)}")
        return "".join(out)


def content_digest(body: bytes) -> str:
    """The RFC 9530 Content-Digest value for ``body``: ``sha-256=:<base64>:``."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


def verify_content_digest(header: str | None, body: bytes) -> None:
    """Check that ``body`` matches the sha-256 member of a Content-Digest header."""
    if header is None:
        raise HashfedError(Problem.DIGEST_MISMATCH, "missing Content-Digest")
    try:
        members = _parse_dictionary(header, "Content-Digest")
    except _ParseError as err:
        raise HashfedError(Problem.DIGEST_MISMATCH, str(err)) from None
    member = members.get("sha-256")
    if member is None:
        raise HashfedError(Problem.DIGEST_MISMATCH, "Content-Digest has no sha-256 member")
    if not isinstance(member.value, bytes):
        raise HashfedError(Problem.DIGEST_MISMATCH, "Content-Digest sha-256 is not a byte sequence")
    if not hmac.compare_digest(member.value, hashlib.sha256(body).digest()):
        raise HashfedError(Problem.DIGEST_MISMATCH, "body does not match Content-Digest sha-256")


def signature_base(parts: RequestParts, params: SignatureParams) -> bytes:
    """The RFC 9421 section 2.5 signature base for ``params`` over ``parts``."""
    derived = _derived_components(parts)
    headers = {name.lower(): value for name, value in parts.headers.items()}
    lines = []
    for component in params.components:
        if not _COMPONENT_RE.fullmatch(component):
            raise _malformed(f"invalid component identifier {component!r}")
        if component.startswith("@"):
            value = derived.get(component)
            if value is None:
                raise _malformed(f"unsupported derived component {component}")
        else:
            field_value = headers.get(component)
            if field_value is None:
                raise _malformed(f"covered header {component} is absent")
            value = field_value.strip(" \t")
        # A line break in a value would let one component forge the next line.
        if "\n" in value or "\r" in value:
            raise _malformed(f"component {component} contains a line break")
        lines.append(f'"{component}": {value}')
    lines.append(f'"@signature-params": {params.serialize()}')
    try:
        return "\n".join(lines).encode("utf-8")
    except UnicodeEncodeError:
        raise _malformed("undecodable header value") from None


def sign_request(
    parts: RequestParts,
    private_key: Ed25519PrivateKey,
    keyid: str,
    *,
    created: int | None = None,
    nonce: str | None = None,
    components: Sequence[str] | None = None,
    label: str = SIGNATURE_LABEL,
) -> dict[str, str]:
    """Sign ``parts``; returns the Signature-Input and Signature headers to send.

    Raises ValueError for a label, keyid or nonce that is not printable ASCII.
    """
    if not _KEY_RE.fullmatch(label):
        raise ValueError(f"invalid signature label {label!r}")
    if components is None:
        has_digest = any(name.lower() == DIGEST_COMPONENT for name in parts.headers)
        components = REQUIRED_COMPONENTS + ((DIGEST_COMPONENT,) if has_digest else ())
    params = SignatureParams(
        components=tuple(components),
        created=int(time.time()) if created is None else created,
        keyid=keyid,
        nonce=secrets.token_urlsafe(16) if nonce is None else nonce,
        alg=SIGNATURE_ALGORITHM,
        label=label,
    )
    signature = private_key.sign(signature_base(parts, params))
    return {
        "Signature-Input": f"{label}={params.serialize()}",
        "Signature": f"{label}=:{base64.b64encode(signature).decode()}:",
    }


def parse_signature_headers(
    signature_input: str | None, signature: str | None, label: str | None = None
) -> tuple[SignatureParams, bytes]:
    """Parse Signature-Input and Signature; returns the chosen entry and its signature bytes.

    ``label`` picks the entry; when None the headers must hold exactly one.
    """
    if signature_input is None and signature is None:
        raise HashfedError(Problem.SIGNATURE_MISSING, "no Signature-Input or Signature header")
    if signature_input is None or signature is None:
        raise _malformed(f"missing {'Signature' if signature is None else 'Signature-Input'}")
    try:
        inputs = _parse_dictionary(signature_input, "Signature-Input")
        signatures = _parse_dictionary(signature, "Signature")
        if label is None:
            if len(inputs) != 1:
                raise _ParseError(
                    f"Signature-Input has {len(inputs)} entries ({', '.join(inputs)}); "
                    "a label is needed to choose"
                )
            label = next(iter(inputs))
        if label not in inputs:
            raise _ParseError(f"Signature-Input has no entry labelled {label!r}")
        if label not in signatures:
            raise _ParseError(f"Signature has no entry labelled {label!r}")
        sig = signatures[label]
        if not isinstance(sig.value, bytes) or sig.params:
            raise _ParseError(f"Signature {label} is not a plain byte sequence")
        return _signature_params(label, inputs[label]), sig.value
    except _ParseError as err:
        raise _malformed(str(err)) from None


def verify_request(
    parts: RequestParts, params: SignatureParams, signature: bytes, public_key: Ed25519PublicKey
) -> None:
    """Verify ``signature`` over ``parts`` with ``public_key``; returns None or raises.

    Coverage (:func:`check_coverage`), the created window and the nonce are the caller's.
    """
    if params.alg is not None and params.alg != SIGNATURE_ALGORITHM:
        raise _malformed(f"unsupported alg {params.alg!r}; only ed25519")
    if len(signature) != ED25519_SIGNATURE_BYTES:
        raise _malformed(f"signature is {len(signature)} bytes, not {ED25519_SIGNATURE_BYTES}")
    try:
        public_key.verify(signature, signature_base(parts, params))
    except InvalidSignature:
        detail = f"signature {params.label} does not verify"
        raise HashfedError(Problem.SIGNATURE_INVALID, detail) from None


def check_coverage(params: SignatureParams, *, has_body: bool) -> None:
    """Refuse a signature that leaves out a component or parameter Hashfed requires."""
    required = REQUIRED_COMPONENTS + ((DIGEST_COMPONENT,) if has_body else ())
    uncovered = [c for c in required if c not in params.components]
    if uncovered:
        raise _malformed(f"signature does not cover {', '.join(uncovered)}")
    absent = [name for name in ("created", "keyid", "nonce") if getattr(params, name) is None]
    if absent:
        raise _malformed(f"signature parameters lack {', '.join(absent)}")


def _malformed(detail: str) -> HashfedError:
    return HashfedError(Problem.SIGNATURE_MALFORMED, detail)


def _derived_components(parts: RequestParts) -> dict[str, str]:
    """RFC 9421 section 2.2 values; "@query" is "?" alone when there is no query."""
    path = parts.path or "/"  # RFC 9421 2.2.6: an empty path is "/"
    query = "?" + parts.query if parts.query else ""
    scheme, authority = parts.scheme.lower(), parts.authority.lower()
    return {
        "@method": parts.method.upper(),
        "@authority": authority,
        "@scheme": scheme,
        "@path": path,
        "@query": "?" + parts.query,
        "@request-target": path + query,
        "@target-uri": f"{scheme}://{authority}{path}{query}",
    }


def _signature_params(label: str, member: _Member) -> SignatureParams:
    if not isinstance(member.value, tuple):
        raise _ParseError(f"Signature-Input {label} is not an inner list")
    components: list[str] = []
    for value, params in member.value:
        if not isinstance(value, str) or isinstance(value, _Token):
            raise _ParseError(f"component {value!r} is not a string")
        if params:
            raise _ParseError(
                f"component parameters are not supported ({value};{next(iter(params))})"
            )
        if not _COMPONENT_RE.fullmatch(value) or value == "@signature-params":
            raise _ParseError(f"invalid component identifier {value!r}")
        if value in components:
            raise _ParseError(f"component {value} is listed twice")
        components.append(value)
    for key, param in member.params.items():
        if key not in _PARAM_ORDER:
            raise _ParseError(f"unsupported signature parameter {key!r}")
        if key in _INT_PARAMS and (not isinstance(param, int) or isinstance(param, bool)):
            raise _ParseError(f"signature parameter {key} must be an integer")
        if key not in _INT_PARAMS and (not isinstance(param, str) or isinstance(param, _Token)):
            raise _ParseError(f"signature parameter {key} must be a string")
    p = member.params  # the types were checked just above
    return SignatureParams(
        components=tuple(components),
        created=cast(int | None, p.get("created")),
        keyid=cast(str | None, p.get("keyid")),
        nonce=cast(str | None, p.get("nonce")),
        alg=cast(str | None, p.get("alg")),
        expires=cast(int | None, p.get("expires")),
        label=label,
        param_order=tuple(p),
    )


def _sf_string(value: str) -> str:
    if not all(" " <= ch <= "~" for ch in value):
        raise ValueError(f"{value!r} is not printable ASCII; it cannot be an RFC 8941 string")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- a strict RFC 8941 parser for the dictionaries that occur here ----------


class _ParseError(ValueError):
    pass


class _Token(str):
    """An RFC 8941 token, kept apart from a string (RFC 9421 wants strings)."""


_BareItem = int | str | bytes | bool
_Params = dict[str, _BareItem]


@dataclass(frozen=True)
class _Member:
    value: _BareItem | tuple[tuple[_BareItem, _Params], ...]  # a tuple is an inner list
    params: _Params


def _parse_dictionary(text: str, field: str) -> dict[str, _Member]:
    if len(text) > MAX_HEADER_BYTES:
        raise _ParseError(f"{field} is longer than {MAX_HEADER_BYTES} bytes")
    if not text.isascii():
        raise _ParseError(f"{field} contains non-ASCII characters")
    try:
        return _Parser(text.strip(" ")).dictionary()
    except _ParseError as err:
        raise _ParseError(f"{field}: {err}") from None


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def dictionary(self) -> dict[str, _Member]:
        if not self.text:
            raise _ParseError("empty header")
        out: dict[str, _Member] = {}
        while True:
            key = self._match(_KEY_RE, "a key")
            if key in out:  # RFC 8941 keeps the last; a duplicate label is too ambiguous
                raise _ParseError(f"duplicate key {key!r}")
            if self._peek() == "=":
                self.pos += 1
                out[key] = (
                    self._inner_list()
                    if self._peek() == "("
                    else _Member(self._bare_item(), self._params())
                )
            else:
                out[key] = _Member(True, self._params())
            self._skip(" \t")
            if self.pos == len(self.text):
                return out
            if self._peek() != ",":
                raise self._error(f"expected ',' after {key!r}")
            self.pos += 1
            self._skip(" \t")
            if self.pos == len(self.text):
                raise _ParseError("trailing comma")

    def _inner_list(self) -> _Member:
        self.pos += 1
        items: list[tuple[_BareItem, _Params]] = []
        while True:
            self._skip(" ")
            if self._peek() == ")":
                self.pos += 1
                return _Member(tuple(items), self._params())
            if len(items) == MAX_COMPONENTS:
                raise _ParseError(f"inner list longer than {MAX_COMPONENTS} items")
            items.append((self._bare_item(), self._params()))
            if self._peek() not in (" ", ")"):
                raise self._error("expected ' ' or ')' in inner list")

    def _params(self) -> _Params:
        params: _Params = {}
        while self._peek() == ";":
            self.pos += 1
            self._skip(" ")
            key = self._match(_KEY_RE, "a parameter name")
            if key in params:
                raise _ParseError(f"duplicate parameter {key!r}")
            params[key] = True
            if self._peek() == "=":
                self.pos += 1
                params[key] = self._bare_item()
        return params

    def _bare_item(self) -> _BareItem:
        ch = self._peek()
        if ch == '"':
            raw = self._match(_STRING_RE, "a terminated string of printable ASCII")
            return re.sub(r"\\(.)", r"\1", raw[1:-1])
        if ch == ":":
            encoded = self._match(_BYTES_RE, "a terminated base64 byte sequence")[1:-1]
            try:  # RFC 8941 4.2.7: parsers should not insist on "=" padding
                return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
            except binascii.Error:
                raise _ParseError("invalid base64 in byte sequence") from None
        if ch == "-" or "0" <= ch <= "9":
            return int(self._match(_INTEGER_RE, "an integer of at most 15 digits"))
        if ch == "?":
            return self._match(_BOOLEAN_RE, "a boolean") == "?1"
        if ch.isascii() and (ch.isalpha() or ch == "*"):
            return _Token(self._match(_TOKEN_RE, "a token"))
        raise self._error("expected an item")

    def _match(self, pattern: re.Pattern[str], what: str) -> str:
        found = pattern.match(self.text, self.pos)
        if found is None:
            raise self._error(f"expected {what}")
        self.pos = found.end()
        return found.group()

    def _peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def _skip(self, chars: str) -> None:
        while self._peek() and self._peek() in chars:
            self.pos += 1

    def _error(self, message: str) -> _ParseError:
        where = f"at offset {self.pos}" if self.pos < len(self.text) else "at end of header"
        return _ParseError(f"{message} {where}")
