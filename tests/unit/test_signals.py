"""The signal-type registry: normalisation, refusals, distance and record ids."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.protocol.problems import HashfedError, Problem
from federation.protocol.signals import (
    SIGNAL_TYPES,
    get_signal_type,
    normalize_signal,
    record_id,
    record_ids,
)

HEX_TYPES = {"pdq": 64, "md5": 32, "sha1": 40, "sha256": 64, "video_md5": 32}
PHOTODNA_B64 = base64.b64encode(bytes(range(144))).decode()
TMK_B64 = base64.b64encode(b"TMK1FVECPDQF" + bytes(500)).decode()
TMK_B64_UNPADDED = base64.b64encode(bytes(513)).decode()
PDQ_ZERO = "0" * 64
PDQ_ONES = "f" * 64


def refusal(signal_type: str, value: object) -> HashfedError:
    with pytest.raises(HashfedError) as caught:
        normalize_signal(signal_type, value)  # type: ignore[arg-type]
    return caught.value


def assert_invalid(signal_type: str, value: object, match: str) -> None:
    error = refusal(signal_type, value)
    assert error.problem is Problem.INVALID_SIGNAL
    assert match in error.detail, error.detail
    assert error.detail.startswith(f"{signal_type} value ")


# --- registry -----------------------------------------------------------------


def test_registry_holds_the_design_types() -> None:
    assert set(SIGNAL_TYPES) == {
        "pdq",
        "md5",
        "sha1",
        "sha256",
        "video_md5",
        "tmk_pdqf",
        "photodna",
        "url",
    }
    for name, signal_type in SIGNAL_TYPES.items():
        assert signal_type.name == name
        assert signal_type.description


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        SIGNAL_TYPES["evil"] = SIGNAL_TYPES["md5"]  # type: ignore[index]


def test_only_pdq_has_a_distance() -> None:
    pdq = get_signal_type("pdq")
    assert pdq.distance is not None
    assert pdq.default_threshold == 31
    for name, signal_type in SIGNAL_TYPES.items():
        if name != "pdq":
            assert signal_type.distance is None
            assert signal_type.default_threshold == 0


@pytest.mark.parametrize("name", ["PDQ", "foo", "", "md5 "])
def test_unknown_signal_type_lists_known_names(name: str) -> None:
    with pytest.raises(HashfedError) as caught:
        get_signal_type(name)
    assert caught.value.problem is Problem.UNKNOWN_SIGNAL_TYPE
    assert repr(name) in caught.value.detail
    assert "md5, pdq, photodna, sha1, sha256, tmk_pdqf, url, video_md5" in caught.value.detail
    with pytest.raises(HashfedError) as caught:
        normalize_signal(name, "x")
    assert caught.value.problem is Problem.UNKNOWN_SIGNAL_TYPE


def test_non_string_signal_type_is_unknown() -> None:
    with pytest.raises(HashfedError) as caught:
        normalize_signal(["pdq"], PDQ_ZERO)  # type: ignore[arg-type]
    assert caught.value.problem is Problem.UNKNOWN_SIGNAL_TYPE


# --- hexadecimal digests and pdq -----------------------------------------------


@pytest.mark.parametrize(("signal_type", "length"), HEX_TYPES.items())
def test_hex_accepts_and_lower_cases(signal_type: str, length: int) -> None:
    value = ("0123456789abcdef" * 4)[:length]
    assert normalize_signal(signal_type, value) == value
    assert normalize_signal(signal_type, value.upper()) == value
    assert normalize_signal(signal_type, f" \t{value.upper()}\r\n") == value


@pytest.mark.parametrize(("signal_type", "length"), HEX_TYPES.items())
def test_hex_refuses_wrong_length(signal_type: str, length: int) -> None:
    assert_invalid(
        signal_type,
        "a" * (length - 1),
        f"must be {length} hexadecimal characters, got {length - 1}",
    )
    assert_invalid(
        signal_type,
        "a" * (length + 1),
        f"must be {length} hexadecimal characters, got {length + 1}",
    )
    assert_invalid(signal_type, "a" * 100_000, "got 100000")


@pytest.mark.parametrize(("signal_type", "length"), HEX_TYPES.items())
def test_hex_refuses_bad_alphabet(signal_type: str, length: int) -> None:
    assert_invalid(signal_type, "g" + "a" * (length - 1), "found 'g' at index 0")
    assert_invalid(signal_type, "a" * (length - 2) + "é1", "found 'é'")
    assert_invalid(signal_type, "0x" + "a" * (length - 2), "found 'x' at index 1")


@pytest.mark.parametrize("signal_type", HEX_TYPES)
@pytest.mark.parametrize("value", ["", " ", "\t\r\n"])
def test_hex_refuses_empty(signal_type: str, value: str) -> None:
    assert_invalid(signal_type, value, "is empty")


@pytest.mark.parametrize(("signal_type", "length"), HEX_TYPES.items())
def test_hex_refuses_inner_whitespace(signal_type: str, length: int) -> None:
    # bytes.fromhex would skip this space; the normaliser must not.
    value = "ab " + "a" * (length - 3)
    assert_invalid(signal_type, value, "found ' ' at index 2")


@pytest.mark.parametrize(("signal_type", "length"), HEX_TYPES.items())
@pytest.mark.parametrize("control", ["\x00", "\x07", "\x1b", "\x7f", "\x85"])
def test_hex_refuses_control_characters(signal_type: str, length: int, control: str) -> None:
    value = "a" * 5 + control + "a" * (length - 6)
    assert_invalid(signal_type, value, f"control character U+{ord(control):04X} at index 5")


def test_non_string_value_is_refused() -> None:
    assert_invalid("pdq", 12345, "must be a string, got int")
    assert_invalid("photodna", b"AAAA", "must be a string, got bytes")
    assert_invalid("url", 1, "must be a string, got int")


def test_refusal_positions_count_from_the_submitted_value() -> None:
    assert_invalid("md5", "  " + "a" * 30 + "q" + "a", "found 'q' at index 32")


# --- pdq distance ----------------------------------------------------------------


def flip_bits(value: str, bits: list[int]) -> str:
    number = int(value, 16)
    for bit in bits:
        number ^= 1 << bit
    return f"{number:064x}"


@pytest.mark.parametrize(
    ("first", "second", "distance"),
    [
        (PDQ_ZERO, PDQ_ZERO, 0),
        (PDQ_ZERO, PDQ_ONES, 256),
        ("a5" * 32, "5a" * 32, 256),
        (PDQ_ZERO, "0" * 63 + "1", 1),
        (PDQ_ZERO, "0" * 63 + "3", 2),
        (PDQ_ZERO, "8" + "0" * 63, 1),
        (PDQ_ZERO, "f" + "0" * 62 + "f", 8),
        (PDQ_ONES, flip_bits(PDQ_ONES, [0, 100, 255]), 3),
    ],
)
def test_pdq_distance_known_pairs(first: str, second: str, distance: int) -> None:
    pdq_distance = get_signal_type("pdq").distance
    assert pdq_distance is not None
    assert pdq_distance(first, second) == distance
    assert pdq_distance(second, first) == distance


@given(st.binary(min_size=32, max_size=32), st.sets(st.integers(0, 255), max_size=40))
def test_pdq_distance_counts_flipped_bits(raw: bytes, bits: set[int]) -> None:
    pdq_distance = get_signal_type("pdq").distance
    assert pdq_distance is not None
    value = raw.hex()
    assert pdq_distance(value, flip_bits(value, sorted(bits))) == len(bits)


# --- opaque base64 -------------------------------------------------------------


def test_photodna_accepts_144_bytes() -> None:
    assert normalize_signal("photodna", PHOTODNA_B64) == PHOTODNA_B64
    assert normalize_signal("photodna", f"\n {PHOTODNA_B64}\t") == PHOTODNA_B64


def test_tmk_pdqf_accepts_its_bounds() -> None:
    smallest = base64.b64encode(bytes(32)).decode()
    largest = base64.b64encode(bytes(512 * 1024)).decode()
    assert normalize_signal("tmk_pdqf", smallest) == smallest
    assert normalize_signal("tmk_pdqf", largest) == largest
    assert normalize_signal("tmk_pdqf", TMK_B64) == TMK_B64
    # A reference .tmk file (263,344 bytes) fits.
    reference = base64.b64encode(bytes(263_344)).decode()
    assert normalize_signal("tmk_pdqf", reference) == reference


def test_base64_is_re_encoded_canonically() -> None:
    # "QUI" + "=" and "QUJ" + "=" decode to the same bytes: unused low bits differ.
    canonical = base64.b64encode(bytes(30) + b"AB").decode()
    assert canonical.endswith("QUI=")
    sloppy = canonical[:-4] + "QUJ="
    assert normalize_signal("tmk_pdqf", sloppy) == canonical


@pytest.mark.parametrize(
    ("signal_type", "value", "match"),
    [
        ("photodna", PHOTODNA_B64[:-4], "must decode to exactly 144 bytes, got 141"),
        ("photodna", PHOTODNA_B64 + "AAAA", "is too long (196 characters)"),
        ("photodna", "", "is empty"),
        ("photodna", PHOTODNA_B64[:-1] + "-", "url-safe base64 is not accepted"),
        ("photodna", "_" + PHOTODNA_B64[1:], "contains '_' at index 0: url-safe"),
        ("photodna", PHOTODNA_B64[:-1] + "*", "'*' at index 191, which is not a base64 character"),
        ("photodna", PHOTODNA_B64[:-2], "is not valid base64"),
        ("photodna", PHOTODNA_B64[:96] + "\n" + PHOTODNA_B64[96:], "control character U+000A"),
        ("photodna", PHOTODNA_B64[:96] + " " + PHOTODNA_B64[96:], "' ' at index 96"),
        ("photodna", PHOTODNA_B64[:10] + "\x00" + PHOTODNA_B64[11:], "control character U+0000"),
        ("tmk_pdqf", "QUJD", "between 32 and 524288 bytes, got 3"),
        ("tmk_pdqf", TMK_B64_UNPADDED + "==", "excess '=' padding: 686 characters"),
        ("tmk_pdqf", TMK_B64 + "=", "is not valid base64"),
        ("tmk_pdqf", "=" + TMK_B64[1:], "is not valid base64"),
        ("tmk_pdqf", TMK_B64.rstrip("="), "is not valid base64"),
        ("tmk_pdqf", base64.b64encode(bytes(512 * 1024 + 1)).decode(), "got 524289"),
        ("tmk_pdqf", base64.b64encode(bytes(600_000)).decode(), "is too long (800000 characters)"),
        ("tmk_pdqf", "Ünïcode" * 8, "'Ü' at index 0"),
    ],
)
def test_base64_refusals(signal_type: str, value: str, match: str) -> None:
    assert_invalid(signal_type, value, match)


# --- url -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # case
        ("HTTP://EXAMPLE.COM/Path", "http://example.com/Path"),
        ("HtTpS://Example.Com/A?B=C", "https://example.com/A?B=C"),
        # whitespace
        ("  http://example.com/ \n", "http://example.com/"),
        # missing path
        ("http://example.com", "http://example.com/"),
        ("http://example.com?q=1", "http://example.com/?q=1"),
        # default ports dropped, others kept, leading zeros gone
        ("http://example.com:80/", "http://example.com/"),
        ("https://example.com:443/", "https://example.com/"),
        ("https://example.com:80/", "https://example.com:80/"),
        ("http://example.com:443/", "http://example.com:443/"),
        ("http://example.com:8080/", "http://example.com:8080/"),
        ("http://example.com:0080/", "http://example.com/"),
        ("http://example.com:/", "http://example.com/"),
        # fragment and userinfo dropped
        ("http://example.com/a#section", "http://example.com/a"),
        ("http://example.com/a?b#c?d", "http://example.com/a?b"),
        ("http://user:secret@example.com/", "http://example.com/"),
        ("http://a@b@example.com/", "http://example.com/"),
        # dot segments
        ("http://example.com/a/./b/../c", "http://example.com/a/c"),
        ("http://example.com/a/b/..", "http://example.com/a/"),
        ("http://example.com/a/b/.", "http://example.com/a/b/"),
        ("http://example.com/../../a", "http://example.com/a"),
        ("http://example.com/a//b/../c", "http://example.com/a//c"),
        ("http://example.com/a/%2e%2E/b", "http://example.com/b"),
        ("http://example.com/a.b/c..d/.e", "http://example.com/a.b/c..d/.e"),
        ("http://example.com/?x=/../y", "http://example.com/?x=/../y"),
        # percent-encoding
        ("http://example.com/%7e%41%2d%5F%2E", "http://example.com/~A-_."),
        ("http://example.com/a%2fb", "http://example.com/a%2Fb"),
        ("http://example.com/%c3%bc", "http://example.com/%C3%BC"),
        ("http://example.com/ü", "http://example.com/%C3%BC"),
        ("http://example.com/a b", "http://example.com/a%20b"),
        ("http://example.com/<x>|{y}", "http://example.com/%3Cx%3E%7C%7By%7D"),
        ("http://example.com/!$&'()*+,;=:@", "http://example.com/!$&'()*+,;=:@"),
        ("http://example.com/?q=%e2%82%ac&r=a+b", "http://example.com/?q=%E2%82%AC&r=a+b"),
        ("http://example.com/?q=€", "http://example.com/?q=%E2%82%AC"),
        ("http://example.com/?a=1?/b", "http://example.com/?a=1?/b"),
        # query order kept, empty query dropped
        ("http://example.com/?b=2&a=1&b=1", "http://example.com/?b=2&a=1&b=1"),
        ("http://example.com/?", "http://example.com/"),
        # IDNA and host escapes
        ("http://Bücher.example/", "http://xn--bcher-kva.example/"),
        ("http://xn--bcher-kva.example/", "http://xn--bcher-kva.example/"),
        ("http://例え.テスト/", "http://xn--r8jz45g.xn--zckzah/"),
        ("http://ex%41mple.com/", "http://example.com/"),
        ("http://example.com./", "http://example.com./"),
        ("http://sub_domain.example.com/", "http://sub_domain.example.com/"),
        # IP literals
        ("http://192.0.2.1:80/", "http://192.0.2.1/"),
        ("http://[2001:DB8:0:0::1]:8080/", "http://[2001:db8::1]:8080/"),
        ("https://[::1]:443", "https://[::1]/"),
    ],
)
def test_url_normalisation(value: str, expected: str) -> None:
    assert normalize_signal("url", value) == expected
    assert normalize_signal("url", expected) == expected


@pytest.mark.parametrize(
    ("value", "match"),
    [
        # scheme-less values are refused, never completed with http://
        ("example.com/path", "has no scheme: 'example.com/path'"),
        ("//example.com/path", "has no scheme"),
        ("www.example.com", "has no scheme"),
        ("localhost:8080/x", "has the scheme 'localhost'"),
        ("javascript:alert(1)", "has the scheme 'javascript'"),
        ("JAVASCRIPT:alert(1)", "has the scheme 'javascript'"),
        ("ftp://example.com/file", "has the scheme 'ftp'"),
        ("data:text/html,hi", "has the scheme 'data'"),
        ("file:///etc/passwd", "has the scheme 'file'"),
        ("http:///path", "has no host"),
        ("http:example.com", "has no host"),
        ("http://user@/", "has no host"),
        ("http://:80/", "has no host"),
        ("http://exa mple.com/", "'exa mple.com', which is not a valid host name"),
        ("http://example..com/", "not a valid host name"),
        ("http://example.com\\evil.com/", "not a valid host name"),
        ("http://example.com:http/", "has the port 'http'"),
        ("http://example.com:0/", "has the port '0'"),
        ("http://example.com:65536/", "has the port '65536'"),
        ("http://example.com:²/", "has the port '²'"),
        ("http://a:1:2/", "expected host or host:port"),
        ("http://[2001:db8::zz]/", "not a valid"),
        ("http://[fe80::1%25eth0]/", "not a valid IPv6 address"),
        ("http://[::1]x/", "after its IPv6 host"),
        ("http://[::1/", "is not a valid URL"),
        ("http://example.com/%zz", "'%' not followed by two hexadecimal digits in its path"),
        ("http://example.com/100%", "write a literal '%' as '%25'"),
        ("http://example.com/?p=5%", "in its query"),
        ("http://ex%zzample.com/", "in its host"),
        ("http://ex%ffample.com/", "escapes are not valid UTF-8"),
        ("http://example.com/\ud800", "unpaired surrogate"),
        ("http://exa\tmple.com/", "control character U+0009"),
        ("http://example.com/\x00", "control character U+0000"),
        ("http://example.com/a\nb", "control character U+000A"),
        ("http://example.com/\x7f", "control character U+007F"),
        ("http://example.com/\x9b", "control character U+009B"),
        ("", "is empty"),
        ("   ", "is empty"),
        (
            "http://example.com/" + "a" * 4078,
            "is too long (4097 characters); expected an absolute http:// or https:// URL "
            "of at most 4096",
        ),
        ("http://example.com/" + "ü" * 2000, "is too long once normalised"),
    ],
)
def test_url_refusals(value: str, match: str) -> None:
    assert_invalid("url", value, match)


def test_url_idna_refusal_is_precise() -> None:
    error = refusal("url", "http://" + "ü" * 70 + ".example/")
    assert error.problem is Problem.INVALID_SIGNAL
    assert "cannot be IDNA-encoded" in error.detail


def test_url_at_the_length_limit() -> None:
    value = "http://example.com/" + "a" * (4096 - 19)
    assert len(value) == 4096
    assert normalize_signal("url", value) == value


# --- record ids ----------------------------------------------------------------


def test_record_id_follows_the_specification() -> None:
    expected = hashlib.sha256(b"pdq\x00" + PDQ_ZERO.encode()).hexdigest()[:32]
    assert record_id("pdq", PDQ_ZERO) == expected
    assert record_id("pdq", PDQ_ZERO) == record_id("pdq", PDQ_ZERO)
    assert len(expected) == 32


def test_record_id_differs_by_type_and_value() -> None:
    value = "d41d8cd98f00b204e9800998ecf8427e"
    ids = {record_id("md5", value), record_id("video_md5", value), record_id("md5", "0" * 32)}
    assert len(ids) == 3


def test_record_id_is_the_same_for_every_spelling() -> None:
    spellings = ["D41D8CD98F00B204E9800998ECF8427E", " d41d8cd98f00b204e9800998ecf8427e\n"]
    ids = {record_id("md5", normalize_signal("md5", spelling)) for spelling in spellings}
    assert len(ids) == 1


def test_record_id_refuses_unknown_type() -> None:
    with pytest.raises(HashfedError) as caught:
        record_id("pqd", PDQ_ZERO)
    assert caught.value.problem is Problem.UNKNOWN_SIGNAL_TYPE


def test_record_ids_are_record_id_pairwise() -> None:
    signals = [(name, f"value-{i}-é") for i, name in enumerate(SIGNAL_TYPES)]
    types, values = [t for t, _ in signals], [v for _, v in signals]
    assert record_ids(types, values) == [record_id(t, v) for t, v in signals]
    assert record_ids([], []) == []
    with pytest.raises(HashfedError) as caught:
        record_ids(["md5", "pqd"], ["0" * 32, PDQ_ZERO])
    assert caught.value.problem is Problem.UNKNOWN_SIGNAL_TYPE


# --- properties: normalisation is idempotent -------------------------------------

whitespace = st.text(alphabet=" \t\r\n", max_size=3)


@st.composite
def hex_values(draw: st.DrawFn) -> tuple[str, str]:
    signal_type = draw(st.sampled_from(sorted(HEX_TYPES)))
    digits = draw(
        st.text(
            alphabet="0123456789abcdefABCDEF",
            min_size=HEX_TYPES[signal_type],
            max_size=HEX_TYPES[signal_type],
        )
    )
    return signal_type, draw(whitespace) + digits + draw(whitespace)


@given(hex_values())
def test_hex_normalisation_is_idempotent(case: tuple[str, str]) -> None:
    signal_type, value = case
    normalized = normalize_signal(signal_type, value)
    assert normalized == value.strip().lower()
    assert normalize_signal(signal_type, normalized) == normalized


@st.composite
def base64_values(draw: st.DrawFn) -> tuple[str, bytes, str]:
    signal_type = draw(st.sampled_from(["photodna", "tmk_pdqf"]))
    if signal_type == "photodna":
        raw = draw(st.binary(min_size=144, max_size=144))
    else:
        raw = draw(st.binary(min_size=32, max_size=2048))
    encoded = base64.b64encode(raw).decode()
    if encoded.endswith("=") and draw(st.booleans()):
        # Set unused low bits of the last data character: same bytes, not canonical.
        data = encoded.rstrip("=")
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        unused = 4 if encoded.endswith("==") else 2
        last = alphabet.index(data[-1]) | draw(st.integers(0, (1 << unused) - 1))
        encoded = data[:-1] + alphabet[last] + encoded[len(data) :]
    return signal_type, raw, draw(whitespace) + encoded + draw(whitespace)


@given(base64_values())
def test_base64_normalisation_is_idempotent(case: tuple[str, bytes, str]) -> None:
    signal_type, raw, value = case
    normalized = normalize_signal(signal_type, value)
    assert normalized == base64.b64encode(raw).decode()
    assert normalize_signal(signal_type, normalized) == normalized


UNICODE_LETTERS = "äöüéñßçøåłžабвгд日本語"
host_labels = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFXYZ0123456789", min_size=1, max_size=12
)
unicode_labels = st.text(alphabet="abcxyz" + UNICODE_LETTERS, min_size=1, max_size=8)
segment_pieces = st.one_of(
    st.text(alphabet="abcXYZ019-._~!$&'()*+,;=:@ äü€<>|{}^`\"[]", max_size=6),
    st.sampled_from(["%41", "%2f", "%2F", "%7e", "%2e", "%25", "%e2%82%ac", ".", ".."]),
)
segments = st.lists(segment_pieces, max_size=3).map("".join)


@st.composite
def urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "hTtPs"]))
    userinfo = draw(st.sampled_from(["", "user@", "user:pass@"]))
    labels = draw(st.lists(st.one_of(host_labels, unicode_labels), min_size=1, max_size=3))
    host = ".".join([*labels, "example"])
    port = draw(st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")))
    path = "".join("/" + segment for segment in draw(st.lists(segments, max_size=5)))
    query = draw(
        st.one_of(st.just(""), st.lists(segments, max_size=3).map(lambda q: "?" + "&".join(q)))
    )
    fragment = draw(st.one_of(st.just(""), segments.map(lambda f: "#" + f)))
    return f"{draw(whitespace)}{scheme}://{userinfo}{host}{port}{path}{query}{fragment}"


@given(urls())
def test_url_normalisation_is_idempotent(value: str) -> None:
    normalized = normalize_signal("url", value)
    assert normalized.isascii()
    assert normalized.startswith(("http://", "https://"))
    assert "#" not in normalized and "@" not in normalized.split("/")[2]
    assert normalize_signal("url", normalized) == normalized


@given(
    st.sampled_from(sorted(SIGNAL_TYPES)),
    st.sampled_from([chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]]),
    st.integers(1, 30),
)
def test_an_inner_control_character_is_always_refused(
    signal_type: str, control: str, index: int
) -> None:
    valid = {
        "pdq": PDQ_ONES,
        "md5": "a" * 32,
        "video_md5": "b" * 32,
        "sha1": "c" * 40,
        "sha256": "d" * 64,
        "photodna": PHOTODNA_B64,
        "tmk_pdqf": TMK_B64,
        "url": "http://example.com/some/long/path/here",
    }[signal_type]
    with pytest.raises(HashfedError) as caught:
        normalize_signal(signal_type, valid[:index] + control + valid[index:])
    assert caught.value.problem is Problem.INVALID_SIGNAL
    with pytest.raises(HashfedError):
        normalize_signal(signal_type, valid[:index] + control + valid[index + 1 :])
