"""Tests of federation.protocol.note: C2SP signed notes, checkpoints and key strings."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.protocol.note import (
    MAX_SIGNATURES,
    Checkpoint,
    NoteError,
    format_checkpoint,
    format_signer_key,
    format_verifier_key,
    key_hash,
    open_note,
    parse_checkpoint,
    parse_signer_key,
    parse_verifier_key,
    sign_note,
)

EM_DASH = "\u2014"


def vectors_dir() -> Path:
    """The shared test vectors: ``../shared/vectors`` beside the repository root."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "vectors"


def _shared_signed_note() -> dict[str, Any]:
    vector: dict[str, Any] = json.loads(
        (vectors_dir() / "notes_and_digests.json").read_text(encoding="utf-8")
    )["signed_note"]
    return vector


# Known answers from the documentation of golang.org/x/mod/sumdb/note, the
# reference implementation: Ed25519 is deterministic, so signing this text with
# this key must give this exact note.
GO_SIGNER_KEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_SIGNATURE_LINE = (
    f"{EM_DASH} PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
GO_SECOND_SIGNATURE_LINE = (
    f"{EM_DASH} EnochRoot "
    "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)

# The example checkpoint text of c2sp.org/tlog-checkpoint.
SPEC_CHECKPOINT_TEXT = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)

ROOT = bytes(range(32))
ROOT_B64 = base64.b64encode(ROOT).decode()
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _non_canonical(encoded: str) -> str:
    """Set a padding bit of one-``=`` base64: same bytes, another spelling."""
    last = _ALPHABET.index(encoded[-2])
    return encoded[:-2] + _ALPHABET[last ^ 1] + "="


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def other_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


# Shared vector (notes_and_digests.json, "signed_note"; its content_digest
# part belongs to the RFC 9530 tests).


def test_shared_vector_verifier_key() -> None:
    vector = _shared_signed_note()
    name, public_key = parse_verifier_key(vector["verifier_key"])
    assert name == "example.com/foo"
    assert key_hash(name, public_key).hex() == "530d903a"
    assert format_verifier_key(name, public_key) == vector["verifier_key"]


def test_shared_vector_note_opens() -> None:
    vector = _shared_signed_note()
    name, public_key = parse_verifier_key(vector["verifier_key"])
    assert open_note(vector["note"], name, public_key) == "This is an example message.\n"
    assert open_note(vector["note"].encode("utf-8"), name, public_key) == (
        "This is an example message.\n"
    )
    # The signature line carries the key hash in its first four bytes.
    encoded = vector["note"].rsplit(" ", 1)[1]
    assert base64.b64decode(encoded)[:4].hex() == "530d903a"


def test_shared_vector_tampered_text_fails() -> None:
    vector = _shared_signed_note()
    name, public_key = parse_verifier_key(vector["verifier_key"])
    tampered = vector["note"].replace("example message", "example massage")
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(tampered, name, public_key)


def test_shared_vector_needs_its_own_key(other_key: Ed25519PrivateKey) -> None:
    vector = _shared_signed_note()
    name, _ = parse_verifier_key(vector["verifier_key"])
    # Same name, another key: another key hash, so the signature is not ours.
    with pytest.raises(NoteError, match="unverified note"):
        open_note(vector["note"], name, other_key.public_key())


# Go reference known answers.


def test_go_signer_key_matches_verifier_key() -> None:
    name, private_key = parse_signer_key(GO_SIGNER_KEY)
    assert name == "PeterNeumann"
    assert format_signer_key(name, private_key) == GO_SIGNER_KEY
    assert format_verifier_key(name, private_key.public_key()) == GO_VERIFIER_KEY
    verifier_name, public_key = parse_verifier_key(GO_VERIFIER_KEY)
    assert verifier_name == name
    assert key_hash(name, public_key).hex() == "c74f20a3"


def test_go_known_answer_signature() -> None:
    name, private_key = parse_signer_key(GO_SIGNER_KEY)
    assert sign_note(GO_TEXT, name, private_key) == GO_TEXT + "\n" + GO_SIGNATURE_LINE


def test_go_doubly_signed_note_ignores_the_unknown_signer() -> None:
    name, public_key = parse_verifier_key(GO_VERIFIER_KEY)
    note = GO_TEXT + "\n" + GO_SIGNATURE_LINE + GO_SECOND_SIGNATURE_LINE
    assert open_note(note, name, public_key) == GO_TEXT
    reordered = GO_TEXT + "\n" + GO_SECOND_SIGNATURE_LINE + GO_SIGNATURE_LINE
    assert open_note(reordered, name, public_key) == GO_TEXT


# Round trips and refusals.


def test_round_trip(key: Ed25519PrivateKey) -> None:
    text = "hashfed.example/log\n3\n" + ROOT_B64 + "\n"
    note = sign_note(text, "hashfed.example/log", key)
    assert note.startswith(text + "\n" + EM_DASH + " hashfed.example/log ")
    assert open_note(note, "hashfed.example/log", key.public_key()) == text


def test_text_may_contain_blank_lines(key: Ed25519PrivateKey) -> None:
    text = "first\n\nthird\n\n"
    note = sign_note(text, "n", key)
    assert open_note(note, "n", key.public_key()) == text


def test_text_may_be_unicode(key: Ed25519PrivateKey) -> None:
    text = "Ognuno sta solo sul cuor della terra\ned è subito sera — 東京\n"
    assert open_note(sign_note(text, "n", key), "n", key.public_key()) == text


def test_tampered_text_fails(key: Ed25519PrivateKey) -> None:
    note = sign_note("size 10\n", "n", key)
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(note.replace("size 10", "size 11"), "n", key.public_key())


def test_tampered_signature_fails(key: Ed25519PrivateKey) -> None:
    note = sign_note("hello\n", "n", key)
    text, line = note.split("\n\n")
    encoded = line.rsplit(" ", 1)[1].rstrip("\n")
    raw = bytearray(base64.b64decode(encoded))
    raw[10] ^= 1  # a byte of the signature, after the 4-byte key hash
    forged = f"{text}\n\n{EM_DASH} n {base64.b64encode(bytes(raw)).decode()}\n"
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(forged, "n", key.public_key())


def test_signature_by_another_key_under_our_key_hash_fails(
    key: Ed25519PrivateKey, other_key: Ed25519PrivateKey
) -> None:
    # An impostor copies our name and key hash: the signature must not pass.
    text = "hello\n"
    signature = other_key.sign(text.encode())
    encoded = base64.b64encode(key_hash("n", key.public_key()) + signature).decode()
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(f"{text}\n{EM_DASH} n {encoded}\n", "n", key.public_key())


def test_wrong_key_fails(key: Ed25519PrivateKey, other_key: Ed25519PrivateKey) -> None:
    note = sign_note("hello\n", "n", key)
    with pytest.raises(NoteError, match="unverified note"):
        open_note(note, "n", other_key.public_key())
    with pytest.raises(NoteError, match="unverified note"):
        open_note(note, "m", key.public_key())


def test_short_signature_by_our_key_fails(key: Ed25519PrivateKey) -> None:
    encoded = base64.b64encode(key_hash("n", key.public_key()) + b"\x00" * 63).decode()
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(f"hello\n\n{EM_DASH} n {encoded}\n", "n", key.public_key())


def test_every_signature_by_our_key_must_verify(key: Ed25519PrivateKey) -> None:
    note = sign_note("hello\n", "n", key)
    bad = base64.b64encode(key_hash("n", key.public_key()) + b"\x00" * 64).decode()
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(note + f"{EM_DASH} n {bad}\n", "n", key.public_key())
    # The same good signature twice is fine.
    assert open_note(note + note.split("\n\n")[1], "n", key.public_key()) == "hello\n"


def test_extra_signers_are_ignored(key: Ed25519PrivateKey, other_key: Ed25519PrivateKey) -> None:
    text = "cosigned\n"
    ours = sign_note(text, "log", key).split("\n\n")[1]
    witness = sign_note(text, "witness", other_key).split("\n\n")[1]
    # A well-formed line by a key we do not know, with a bogus signature.
    bogus = base64.b64encode(bytes([1, 2, 3, 4]) + b"x" * 64).decode()
    unknown = f"{EM_DASH} stranger {bogus}\n"
    # Our name with another key hash is another key, hence also unknown.
    other_hash = base64.b64encode(bytes(4) + b"x" * 64).decode()
    same_name = f"{EM_DASH} log {other_hash}\n"
    note = text + "\n" + witness + unknown + same_name + ours
    assert open_note(note, "log", key.public_key()) == text
    assert open_note(note, "witness", other_key.public_key()) == text


@pytest.mark.parametrize(
    ("note", "reason"),
    [
        ("hello\n" + f"{EM_DASH} n AAAA\n", "no blank line"),
        ("hello\n\n", "signature block is empty"),
        (f"hello\n\n{EM_DASH} n AAAAAAAA", "does not end with a newline"),
        ("hello\n\n- n AAAAAAAA\n", "em dash"),
        (f"hello\n\n{EM_DASH}n AAAAAAAA\n", "em dash"),
        (f"hello\n\n{EM_DASH} n\n", "only 0 bytes"),
        (f"hello\n\n{EM_DASH} n AAAA\n", "only 3 bytes"),
        (f"hello\n\n{EM_DASH} n AAAA AAAA\n", "not valid base64"),
        (f"hello\n\n{EM_DASH} n AAAAAAA\n", "not valid base64"),
        (f"hello\n\n{EM_DASH} n AAAAAAB=\n", "not canonical"),
        (f"hello\n\n{EM_DASH} a+b AAAAAAAA\n", "invalid key name"),
        (f"hello\n\n{EM_DASH}  AAAAAAAA\n", "invalid key name"),
        (f"hello\n\n{EM_DASH} a\u00a0b AAAAAAAA\n", "invalid key name"),
        (f"hello\r\n\n{EM_DASH} n AAAAAAAA\n", "control character"),
        (f"hel\tlo\n\n{EM_DASH} n AAAAAAAA\n", "control character"),
        (f"hello\x00\n\n{EM_DASH} n AAAAAAAA\n", "control character"),
        (f"hello\n\n{EM_DASH} n AAAAAAAA\n\n", "signature block is empty"),
        (f"hello\n\n{EM_DASH} n AAAAAAAA\nnot a signature\n", "em dash"),
        ("hello\udcff\n\n" + f"{EM_DASH} n AAAAAAAA\n", "not valid UTF-8"),
    ],
)
def test_malformed_notes(note: str, reason: str, key: Ed25519PrivateKey) -> None:
    with pytest.raises(NoteError, match=f"malformed note: .*({reason})"):
        open_note(note, "n", key.public_key())


def test_missing_blank_line_in_a_real_note(key: Ed25519PrivateKey) -> None:
    note = sign_note("hello\n", "n", key)
    with pytest.raises(NoteError, match="malformed note"):
        open_note(note.replace("\n\n", "\n"), "n", key.public_key())


def test_non_utf8_bytes(key: Ed25519PrivateKey) -> None:
    note = sign_note("hello\n", "n", key).encode("utf-8")
    with pytest.raises(NoteError, match="malformed note: not UTF-8"):
        open_note(b"\xff" + note, "n", key.public_key())
    # An overlong encoding of "/" is not UTF-8 either.
    with pytest.raises(NoteError, match="malformed note: not UTF-8"):
        open_note(note.replace(b"hello", b"hel\xc0\xaflo"), "n", key.public_key())


def test_too_many_signatures(key: Ed25519PrivateKey) -> None:
    note = sign_note("hello\n", "n", key)
    line = note.split("\n\n")[1]
    assert open_note(note + line * (MAX_SIGNATURES - 1), "n", key.public_key()) == "hello\n"
    with pytest.raises(NoteError, match="more than 100 signatures"):
        open_note(note + line * MAX_SIGNATURES, "n", key.public_key())


@pytest.mark.parametrize(
    ("text", "name", "reason"),
    [
        ("no newline", "n", "does not end with a newline"),
        ("", "n", "does not end with a newline"),
        ("tab\there\n", "n", "control character"),
        ("cr\r\n", "n", "control character"),
        ("surrogate\udcff\n", "n", "not valid UTF-8"),
        ("ok\n", "", "invalid key name"),
        ("ok\n", "a b", "invalid key name"),
        ("ok\n", "a+b", "invalid key name"),
        ("ok\n", "a\u2003b", "invalid key name"),
    ],
)
def test_sign_note_refuses(text: str, name: str, reason: str, key: Ed25519PrivateKey) -> None:
    with pytest.raises(NoteError, match=f"malformed note: .*{reason}"):
        sign_note(text, name, key)


NO_DB = settings(database=None, deadline=None, max_examples=50)
NOTE_TEXT = st.text(
    st.characters(
        exclude_categories=["Cs"],
        exclude_characters="".join(chr(c) for c in range(0x20) if c != 0x0A),
    ),
    max_size=200,
).map(lambda s: s + "\n")


@NO_DB
@given(NOTE_TEXT)
def test_round_trip_property(text: str) -> None:
    key = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
    assert open_note(sign_note(text, "prop.example", key), "prop.example", key.public_key()) == text


# Key strings.


def test_key_strings_round_trip(key: Ed25519PrivateKey) -> None:
    verifier = format_verifier_key("hashfed.example/log", key.public_key())
    name, public_key = parse_verifier_key(verifier)
    assert name == "hashfed.example/log"
    assert format_verifier_key(name, public_key) == verifier
    signer = format_signer_key("hashfed.example/log", key)
    assert signer.startswith("PRIVATE+KEY+hashfed.example/log+")
    signer_name, private_key = parse_signer_key(signer)
    assert signer_name == name
    assert format_signer_key(signer_name, private_key) == signer
    assert verifier.split("+")[1] == signer.split("+")[3]


@pytest.mark.parametrize(
    ("key_string", "reason"),
    [
        ("", "invalid key name"),
        ("PeterNeumann", "not 8 hex digits"),
        ("PeterNeumann+c74f20a3", "unknown algorithm"),
        ("PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "8 hex"),
        ("PeterNeumann+xyzf20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "8 hex"),
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("PeterNeumanm+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TX", "does not match"),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T", "base64"),
        # Go's own test strings: wrong key length and unknown algorithm, each
        # with a key hash adjusted to match.
        (
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
            "(not canonical|not 32)",
        ),
        ("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "unknown algorithm"),
        (f"n+00000000+{base64.b64encode(bytes([1]) + bytes(33)).decode()}", "33 bytes, not 32"),
        (f"n+00000000+{base64.b64encode(bytes([1]) + bytes(31)).decode()}", "31 bytes, not 32"),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "invalid key name"),
    ],
)
def test_parse_verifier_key_refuses(key_string: str, reason: str) -> None:
    with pytest.raises(NoteError, match=f"invalid key: .*{reason}"):
        parse_verifier_key(key_string)


def test_parse_verifier_key_refuses_every_mangling() -> None:
    # As Go's test does: every proper substring and every one-byte change fails.
    for start in range(len(GO_VERIFIER_KEY)):
        for end in range(start + 1, len(GO_VERIFIER_KEY) + 1):
            if (start, end) != (0, len(GO_VERIFIER_KEY)):
                with pytest.raises(NoteError):
                    parse_verifier_key(GO_VERIFIER_KEY[start:end])
    for position in range(len(GO_VERIFIER_KEY)):
        changed = list(GO_VERIFIER_KEY)
        changed[position] = chr(ord(changed[position]) + 1)
        with pytest.raises(NoteError):
            parse_verifier_key("".join(changed))


def test_parse_signer_key_refuses_every_mangling() -> None:
    for start in range(len(GO_SIGNER_KEY)):
        for end in range(start + 1, len(GO_SIGNER_KEY) + 1):
            if (start, end) != (0, len(GO_SIGNER_KEY)):
                with pytest.raises(NoteError):
                    parse_signer_key(GO_SIGNER_KEY[start:end])
    for position in range(len(GO_SIGNER_KEY)):
        changed = list(GO_SIGNER_KEY)
        changed[position] = chr(ord(changed[position]) + 1)
        with pytest.raises(NoteError):
            parse_signer_key("".join(changed))


def test_format_key_refuses_bad_name(key: Ed25519PrivateKey) -> None:
    with pytest.raises(NoteError, match="invalid key: invalid key name"):
        format_verifier_key("a+b", key.public_key())
    with pytest.raises(NoteError, match="invalid key: invalid key name"):
        format_signer_key("", key)


# Checkpoints.


def test_spec_checkpoint_example() -> None:
    checkpoint = parse_checkpoint(SPEC_CHECKPOINT_TEXT)
    assert checkpoint.origin == "example.com/behind-the-sofa"
    assert checkpoint.size == 20852163
    assert checkpoint.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert checkpoint.extensions == ()
    assert format_checkpoint(checkpoint) == SPEC_CHECKPOINT_TEXT


@pytest.mark.parametrize(
    "checkpoint",
    [
        Checkpoint("hashfed.example/log", 0, ROOT),
        Checkpoint("hashfed.example/log", 1, ROOT),
        Checkpoint("origin with spaces is allowed", 2**64 - 1, ROOT),
        Checkpoint("hashfed.example/log", 42, ROOT, ("ext one", "— ext two")),
    ],
)
def test_checkpoint_round_trip(checkpoint: Checkpoint, key: Ed25519PrivateKey) -> None:
    text = format_checkpoint(checkpoint)
    assert parse_checkpoint(text) == checkpoint
    note = sign_note(text, "hashfed.example/log", key)
    assert parse_checkpoint(open_note(note, "hashfed.example/log", key.public_key())) == checkpoint


def test_checkpoint_format_is_exact() -> None:
    text = format_checkpoint(Checkpoint("o", 7, ROOT, ("x",)))
    assert text == f"o\n7\n{ROOT_B64}\nx\n"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f"o\n12a\n{ROOT_B64}\n", "not canonical decimal"),
        (f"o\n-1\n{ROOT_B64}\n", "not canonical decimal"),
        (f"o\n+1\n{ROOT_B64}\n", "not canonical decimal"),
        (f"o\n 1\n{ROOT_B64}\n", "not canonical decimal"),
        (f"o\n1 \n{ROOT_B64}\n", "not canonical decimal"),
        (f"o\n1.0\n{ROOT_B64}\n", "not canonical decimal"),
        (f"o\n1_000\n{ROOT_B64}\n", "not canonical decimal"),
        (f"o\n0x10\n{ROOT_B64}\n", "not canonical decimal"),
        (f"o\n\u0661\u0662\n{ROOT_B64}\n", "not canonical decimal"),
        (f"o\n01\n{ROOT_B64}\n", "not canonical decimal"),
        (f"o\n00\n{ROOT_B64}\n", "not canonical decimal"),
        (f"o\n18446744073709551616\n{ROOT_B64}\n", "exceeds"),
        (f"o\n{'9' * 5000}\n{ROOT_B64}\n", "exceeds"),
        ("o\n1\nnot base64!\n", "not valid base64"),
        (f"o\n1\n{ROOT_B64.rstrip('=')}\n", "not valid base64"),
        (f"o\n1\n{_non_canonical(ROOT_B64)}\n", "not canonical base64"),
        (f"o\n1\n{base64.urlsafe_b64encode(bytes([255]) * 32).decode()}\n", "not valid base64"),
        (f"o\n1\n{base64.b64encode(ROOT[:31]).decode()}\n", "31 bytes"),
        (f"o\n1\n{base64.b64encode(ROOT + b'x').decode()}\n", "33 bytes"),
        (f"o\n1\n{base64.b64encode(b'').decode()}\n", "empty line"),
        (f"o\n1\n{ROOT_B64}", "does not end with a newline"),
        ("o\n1\n", "2 lines"),
        ("", "does not end with a newline"),
        (f"\n1\n{ROOT_B64}\n", "empty line"),
        (f"o\n1\n{ROOT_B64}\n\n", "empty line"),
        (f"o\n1\n{ROOT_B64}\next\n\nmore\n", "empty line"),
        (f"o\r\n1\n{ROOT_B64}\n", "control character"),
        (f"o\n1\r\n{ROOT_B64}\n", "control character"),
        (f"o\n1\n{ROOT_B64}\r\n", "control character"),
    ],
)
def test_malformed_checkpoints(text: str, reason: str) -> None:
    with pytest.raises(NoteError, match=f"malformed checkpoint: .*{reason}"):
        parse_checkpoint(text)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"origin": ""}, "bad origin"),
        ({"origin": "two\nlines"}, "bad origin"),
        ({"size": -1}, "out of range"),
        ({"size": 2**64}, "out of range"),
        ({"size": True}, "out of range"),
        ({"root_hash": b"\x00" * 31}, "31 bytes"),
        ({"extensions": ("",)}, "bad extension"),
        ({"extensions": ("a\nb",)}, "bad extension"),
    ],
)
def test_checkpoint_refuses_bad_fields(kwargs: dict[str, Any], reason: str) -> None:
    fields: dict[str, Any] = {"origin": "o", "size": 1, "root_hash": ROOT, **kwargs}
    with pytest.raises(NoteError, match=f"malformed checkpoint: .*{reason}"):
        Checkpoint(**fields)


@NO_DB
@given(
    st.text(st.characters(min_codepoint=0x20, exclude_categories=["Cs"]), min_size=1),
    st.integers(0, 2**64 - 1),
    st.binary(min_size=32, max_size=32),
)
def test_checkpoint_round_trip_property(origin: str, size: int, root: bytes) -> None:
    checkpoint = Checkpoint(origin, size, root)
    assert parse_checkpoint(format_checkpoint(checkpoint)) == checkpoint
