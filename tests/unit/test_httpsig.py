"""RFC 9421 request signatures and RFC 9530 Content-Digest (federation.protocol.httpsig)."""

from __future__ import annotations

import base64
import dataclasses
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from federation.protocol.httpsig import (
    MAX_COMPONENTS,
    MAX_HEADER_BYTES,
    REQUIRED_COMPONENTS,
    RequestParts,
    SignatureParams,
    check_coverage,
    content_digest,
    parse_signature_headers,
    sign_request,
    signature_base,
    verify_content_digest,
    verify_request,
)
from federation.protocol.problems import HashfedError, Problem

# RFC 9421 Appendix B.1.4, "test-key-ed25519".
RFC_ED25519_PUBLIC_PEM = b"""-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=
-----END PUBLIC KEY-----
"""
RFC_ED25519_PRIVATE_PEM = b"""-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----
"""

# RFC 9421 Appendix B.2.6, the parts of the B.2 test-request that the signature covers.
RFC_B26_PARTS = RequestParts(
    method="POST",
    authority="example.com",
    path="/foo",
    query="param=Value&Pet=dog",
    headers={
        "Host": "example.com",
        "Date": "Tue, 20 Apr 2021 02:07:55 GMT",
        "Content-Type": "application/json",
        "Content-Length": "18",
    },
)
RFC_B26_BASE = (
    b'"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
    b'"@method": POST\n'
    b'"@path": /foo\n'
    b'"@authority": example.com\n'
    b'"content-type": application/json\n'
    b'"content-length": 18\n'
    b'"@signature-params": ("date" "@method" "@path" "@authority" "content-type" '
    b'"content-length");created=1618884473;keyid="test-key-ed25519"'
)
RFC_B26_SIGNATURE_INPUT = (
    'sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length")'
    ';created=1618884473;keyid="test-key-ed25519"'
)
RFC_B26_SIGNATURE = (
    "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1"
    "u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:"
)

BODY = b'{"statements": []}'
PRIVATE_KEY = Ed25519PrivateKey.generate()
PUBLIC_KEY = PRIVATE_KEY.public_key()


def rfc_private_key() -> Ed25519PrivateKey:
    key = load_pem_private_key(RFC_ED25519_PRIVATE_PEM, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def rfc_public_key() -> Ed25519PublicKey:
    key = load_pem_public_key(RFC_ED25519_PUBLIC_PEM)
    assert isinstance(key, Ed25519PublicKey)
    return key


def post_parts(**changes: Any) -> RequestParts:
    parts = RequestParts(
        method="POST",
        authority="hashfed.example:8443",
        path="/v1/statements",
        query="dry-run=1",
        headers={"Content-Type": "application/json", "Content-Digest": content_digest(BODY)},
    )
    return dataclasses.replace(parts, **changes)


def signed(parts: RequestParts) -> tuple[SignatureParams, bytes]:
    headers = sign_request(parts, PRIVATE_KEY, "org-a/key-1", created=1_700_000_000, nonce="n-1")
    return parse_signature_headers(headers["Signature-Input"], headers["Signature"])


# --- RFC test vectors --------------------------------------------------------


def test_rfc9421_b26_signature_base_is_reproduced_byte_for_byte() -> None:
    params, _ = parse_signature_headers(RFC_B26_SIGNATURE_INPUT, RFC_B26_SIGNATURE)
    assert params.label == "sig-b26"
    assert params.created == 1618884473 and params.keyid == "test-key-ed25519"
    assert signature_base(RFC_B26_PARTS, params) == RFC_B26_BASE
    assert "sig-b26=" + params.serialize() == RFC_B26_SIGNATURE_INPUT


def test_rfc9421_b26_published_signature_verifies() -> None:
    params, signature = parse_signature_headers(RFC_B26_SIGNATURE_INPUT, RFC_B26_SIGNATURE)
    verify_request(RFC_B26_PARTS, params, signature, rfc_public_key())


def test_rfc9421_b26_signing_reproduces_the_published_signature() -> None:
    params, published = parse_signature_headers(RFC_B26_SIGNATURE_INPUT, RFC_B26_SIGNATURE)
    # Ed25519 is deterministic: the same key over the same base gives the same bytes.
    assert rfc_private_key().sign(signature_base(RFC_B26_PARTS, params)) == published


def test_rfc9421_b1_4_key_pair_matches() -> None:
    assert rfc_private_key().public_key() == rfc_public_key()


def test_content_digest_matches_rfc9530_example() -> None:
    # RFC 9530 examples: {"hello": "world"} followed by LF.
    body = b'{"hello": "world"}\n'
    assert content_digest(body) == "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:"
    verify_content_digest(
        "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:, "
        "sha-512=:YMAam51Jz/jOATT6/zvHrLVgOYTGFy1d6GJiOHTohq4yP+pgk4vf2aCs"
        "yRZOtw8MjkM7iw7yZ/WkppmM44T3qg==:",
        body,
    )


# --- Content-Digest ------------------------------------------------------------


def test_verify_content_digest_accepts_matching_body() -> None:
    verify_content_digest(content_digest(BODY), BODY)


@pytest.mark.parametrize(
    ("header", "body", "match"),
    [
        (None, BODY, "missing Content-Digest"),
        (content_digest(BODY), BODY + b" ", "does not match"),
        (content_digest(b""), BODY, "does not match"),
        ("sha-512=:YMAam51Jz/jOATT6/zvHrLVgOYTGFy1d6GJiOHTohq4=:", BODY, "no sha-256 member"),
        ("sha-256=abc", BODY, "sha-256 is not a byte sequence"),
        ("sha-256=:not base64!:", BODY, "byte sequence"),
        ("sha-256", BODY, "sha-256 is not a byte sequence"),
        ("SHA-256=:AAAA:", BODY, "expected a key"),
        ("", BODY, "empty header"),
    ],
)
def test_verify_content_digest_refuses(header: str | None, body: bytes, match: str) -> None:
    with pytest.raises(HashfedError, match=match) as err:
        verify_content_digest(header, body)
    assert err.value.problem is Problem.DIGEST_MISMATCH


# --- sign and verify -------------------------------------------------------------


def test_round_trip_with_body() -> None:
    parts = post_parts()
    params, signature = signed(parts)
    assert params.components == (*REQUIRED_COMPONENTS, "content-digest")
    assert (params.created, params.keyid, params.nonce, params.alg) == (
        1_700_000_000,
        "org-a/key-1",
        "n-1",
        "ed25519",
    )
    check_coverage(params, has_body=True)
    verify_content_digest(parts.headers["Content-Digest"], BODY)
    verify_request(parts, params, signature, PUBLIC_KEY)


def test_round_trip_without_body_or_query() -> None:
    parts = RequestParts("get", "Hashfed.Example", "/v1/feed", "", {"Accept": "*/*"})
    params, signature = signed(parts)
    assert params.components == REQUIRED_COMPONENTS
    check_coverage(params, has_body=False)
    verify_request(parts, params, signature, PUBLIC_KEY)
    base = signature_base(parts, params).decode()
    assert '"@method": GET\n"@authority": hashfed.example\n"@path": /v1/feed\n"@query": ?\n' in base


def test_sign_request_defaults_created_nonce_and_alg() -> None:
    headers = sign_request(post_parts(), PRIVATE_KEY, "k")
    params, _ = parse_signature_headers(headers["Signature-Input"], headers["Signature"])
    assert params.created is not None and abs(params.created - time.time()) < 5
    assert params.nonce and params.alg == "ed25519" and params.label == "sig1"
    other, _ = parse_signature_headers(**_pair(sign_request(post_parts(), PRIVATE_KEY, "k")))
    assert other.nonce != params.nonce
    assert headers["Signature-Input"].startswith(
        'sig1=("@method" "@authority" "@path" "@query" "content-digest");created='
    )


def _pair(headers: dict[str, str]) -> dict[str, str]:
    return {"signature_input": headers["Signature-Input"], "signature": headers["Signature"]}


@pytest.mark.parametrize(
    "tampered",
    [
        {"method": "PUT"},
        {"path": "/v1/statements/other"},
        {"query": "dry-run=0"},
        {"query": ""},
        {"authority": "evil.example"},
        {"headers": {"Content-Digest": content_digest(b"{}")}},
    ],
    ids=["method", "path", "query", "query-dropped", "authority", "digest-header"],
)
def test_tampered_request_does_not_verify(tampered: dict[str, Any]) -> None:
    params, signature = signed(post_parts())
    with pytest.raises(HashfedError, match="does not verify") as err:
        verify_request(post_parts(**tampered), params, signature, PUBLIC_KEY)
    assert err.value.problem is Problem.SIGNATURE_INVALID


def test_tampered_body_is_caught_by_the_digest() -> None:
    parts = post_parts()
    params, signature = signed(parts)
    verify_request(parts, params, signature, PUBLIC_KEY)  # the headers are intact...
    with pytest.raises(HashfedError) as err:  # ...but the body no longer matches them
        verify_content_digest(parts.headers["Content-Digest"], BODY.replace(b"[]", b"[1]"))
    assert err.value.problem is Problem.DIGEST_MISMATCH


def test_wrong_key_does_not_verify() -> None:
    params, signature = signed(post_parts())
    with pytest.raises(HashfedError) as err:
        verify_request(post_parts(), params, signature, Ed25519PrivateKey.generate().public_key())
    assert err.value.problem is Problem.SIGNATURE_INVALID


def test_tampered_signature_parameters_do_not_verify() -> None:
    params, signature = signed(post_parts())
    later = dataclasses.replace(params, created=1_700_000_001)
    with pytest.raises(HashfedError) as err:
        verify_request(post_parts(), later, signature, PUBLIC_KEY)
    assert err.value.problem is Problem.SIGNATURE_INVALID


def test_verify_refuses_other_algorithms_and_sizes() -> None:
    params, signature = signed(post_parts())
    with pytest.raises(HashfedError, match="unsupported alg 'rsa-pss-sha512'") as err:
        verify_request(
            post_parts(), dataclasses.replace(params, alg="rsa-pss-sha512"), signature, PUBLIC_KEY
        )
    assert err.value.problem is Problem.SIGNATURE_MALFORMED
    with pytest.raises(HashfedError, match="63 bytes") as err:
        verify_request(post_parts(), params, signature[:-1], PUBLIC_KEY)
    assert err.value.problem is Problem.SIGNATURE_MALFORMED


# --- signature base ----------------------------------------------------------------


def test_signature_base_derived_components_and_header_lookup() -> None:
    parts = RequestParts(
        "post", "Hashfed.Example", "/v1/a%20b", "x=1", {"X-Thing": "  v  "}, scheme="HTTPS"
    )
    params = SignatureParams(
        components=("@scheme", "@target-uri", "@request-target", "x-thing"),
        created=1,
        keyid="k",
    )
    assert signature_base(parts, params) == (
        b'"@scheme": https\n'
        b'"@target-uri": https://hashfed.example/v1/a%20b?x=1\n'
        b'"@request-target": /v1/a%20b?x=1\n'
        b'"x-thing": v\n'
        b'"@signature-params": ("@scheme" "@target-uri" "@request-target" "x-thing")'
        b';created=1;keyid="k"'
    )


@pytest.mark.parametrize(
    ("component", "headers", "match"),
    [
        ("content-digest", {}, "covered header content-digest is absent"),
        ("@status", {}, "unsupported derived component @status"),
        ("Content-Type", {"Content-Type": "a"}, "invalid component identifier"),
        ("x-evil", {"X-Evil": 'a\n"@method": GET'}, "contains a line break"),
    ],
)
def test_signature_base_refuses(component: str, headers: dict[str, str], match: str) -> None:
    parts = RequestParts("GET", "h", "/", "", headers)
    with pytest.raises(HashfedError, match=match) as err:
        signature_base(parts, SignatureParams((component,), created=1, keyid="k"))
    assert err.value.problem is Problem.SIGNATURE_MALFORMED


def test_serialize_keeps_received_parameter_order() -> None:
    value = 'sig1=("@method");keyid="k \\"q\\"";nonce="n";created=5;alg="ed25519";expires=9'
    params, _ = parse_signature_headers(value, "sig1=:AAAA:")
    assert params.keyid == 'k "q"' and params.expires == 9
    assert "sig1=" + params.serialize() == value
    fresh = SignatureParams(("@method",), created=5, keyid="k", nonce="n", alg="ed25519", expires=9)
    assert fresh.serialize() == '("@method");created=5;expires=9;nonce="n";keyid="k";alg="ed25519"'


# --- parsing ----------------------------------------------------------------------------


def test_parse_both_headers_absent_is_missing() -> None:
    with pytest.raises(HashfedError) as err:
        parse_signature_headers(None, None)
    assert err.value.problem is Problem.SIGNATURE_MISSING


def test_parse_picks_the_requested_label() -> None:
    inputs = 'a=("@method");created=1;keyid="ka", b=("@path");created=2;keyid="kb"'
    params, signature = parse_signature_headers(inputs, "a=:AAAA:, b=:AQID:", label="b")
    assert (params.label, params.components, params.keyid, signature) == (
        "b",
        ("@path",),
        "kb",
        b"\x01\x02\x03",
    )


GOOD_INPUT = 'sig1=("@method" "@path");created=1;keyid="k"'
GOOD_SIGNATURE = "sig1=:" + base64.b64encode(bytes(64)).decode() + ":"


@pytest.mark.parametrize(
    ("signature_input", "signature", "match"),
    [
        (None, GOOD_SIGNATURE, "missing Signature-Input"),
        (GOOD_INPUT, None, "missing Signature"),
        ("garbage", GOOD_SIGNATURE, "no entry labelled 'garbage'"),
        ("sig1", GOOD_SIGNATURE, "Signature-Input sig1 is not an inner list"),
        ("sig1=token", GOOD_SIGNATURE, "Signature-Input sig1 is not an inner list"),
        ("%%%", GOOD_SIGNATURE, "expected a key at offset 0"),
        ('sig1=("@method);created=1', GOOD_SIGNATURE, "terminated string"),
        ('sig1=("@method" "@path";created=1', GOOD_SIGNATURE, "inner list at end"),
        (GOOD_INPUT, "sig1=:AAA*:", "base64 byte sequence"),
        (GOOD_INPUT, "sig1=:A:", "invalid base64"),
        (GOOD_INPUT, "sig1=:AAAA", "terminated base64"),
        (GOOD_INPUT, 'sig1="AAAA"', "not a plain byte sequence"),
        (GOOD_INPUT, "sig1=:AAAA:;x=1", "not a plain byte sequence"),
        (GOOD_INPUT, "other=:AAAA:", "Signature has no entry labelled 'sig1'"),
        ('a=("@method"), b=("@path")', GOOD_SIGNATURE, "2 entries \\(a, b\\)"),
        (GOOD_INPUT + ", sig1=()", GOOD_SIGNATURE, "duplicate key 'sig1'"),
        (GOOD_INPUT + ",", GOOD_SIGNATURE, "trailing comma"),
        (GOOD_INPUT + " x", GOOD_SIGNATURE, "expected ',' after 'sig1'"),
        ("sig1=(@method)", GOOD_SIGNATURE, "expected an item at offset 6"),
        ("sig1=(method)", GOOD_SIGNATURE, "component 'method' is not a string"),
        ('sig1=("@method") ;created=1', GOOD_SIGNATURE, "expected ',' after 'sig1'"),
        ('sig1=("content-type";sf)', GOOD_SIGNATURE, "component parameters are not supported"),
        ('sig1=("@method" "@method")', GOOD_SIGNATURE, "listed twice"),
        ('sig1=("Host")', GOOD_SIGNATURE, "invalid component identifier 'Host'"),
        ('sig1=("@signature-params")', GOOD_SIGNATURE, "invalid component identifier"),
        ('sig1=("@method");tag="x"', GOOD_SIGNATURE, "unsupported signature parameter 'tag'"),
        ('sig1=("@method");created="1"', GOOD_SIGNATURE, "created must be an integer"),
        ('sig1=("@method");created=1.5', GOOD_SIGNATURE, "at most 15 digits"),
        ('sig1=("@method");created=1234567890123456', GOOD_SIGNATURE, "at most 15 digits"),
        ('sig1=("@method");keyid=k', GOOD_SIGNATURE, "keyid must be a string"),
        ('sig1=("@method");keyid=?1', GOOD_SIGNATURE, "keyid must be a string"),
        ('sig1=("@méthod")', GOOD_SIGNATURE, "non-ASCII"),
        ('sig1=("@method\t")', GOOD_SIGNATURE, "terminated string of printable ASCII"),
        ('sig1=("a\\x")', GOOD_SIGNATURE, "terminated string"),
        ("sig1=(" + '"a" ' * (MAX_COMPONENTS + 1) + ")", GOOD_SIGNATURE, "longer than 32"),
        ('sig1=("' + "a" * MAX_HEADER_BYTES + '")', GOOD_SIGNATURE, "longer than 8192"),
        (GOOD_INPUT, "sig1=:" + "A" * MAX_HEADER_BYTES + ":", "Signature is longer than"),
        ("", GOOD_SIGNATURE, "empty header"),
    ],
)
def test_parse_refuses_malformed_headers(
    signature_input: str | None, signature: str | None, match: str
) -> None:
    with pytest.raises(HashfedError, match=match) as err:
        parse_signature_headers(signature_input, signature)
    assert err.value.problem is Problem.SIGNATURE_MALFORMED


def test_parse_accepts_unpadded_base64_and_optional_whitespace() -> None:
    params, signature = parse_signature_headers(
        ' sig1=( "@method"  "@path" );created=1;keyid="k" ', "sig1=:AQI:"
    )
    assert params.components == ("@method", "@path") and signature == b"\x01\x02"


# --- coverage policy -------------------------------------------------------------------


def test_check_coverage_accepts_a_full_signature() -> None:
    params, _ = signed(post_parts())
    check_coverage(params, has_body=True)


@pytest.mark.parametrize(
    ("changes", "has_body", "match"),
    [
        ({"components": ("@method", "@authority", "@path")}, False, "does not cover @query"),
        ({"components": REQUIRED_COMPONENTS}, True, "does not cover content-digest"),
        ({"components": ("@method",)}, True, "@authority, @path, @query, content-digest"),
        ({"nonce": None}, True, "lack nonce"),
        ({"created": None, "keyid": None}, True, "lack created, keyid"),
    ],
)
def test_check_coverage_refuses(changes: dict[str, Any], has_body: bool, match: str) -> None:
    params, _ = signed(post_parts())
    with pytest.raises(HashfedError, match=match) as err:
        check_coverage(dataclasses.replace(params, **changes), has_body=has_body)
    assert err.value.problem is Problem.SIGNATURE_MALFORMED
