"""C2SP signed notes and transparency-log checkpoints, Ed25519 keys only.

A signed note (https://c2sp.org/signed-note) is a text ending in a newline, a
blank line, then one or more signature lines::

    — <key name> <base64(4-byte key hash || signature)>

A checkpoint (https://c2sp.org/tlog-checkpoint) is a note whose text is the
log's origin, its tree size in decimal and its base64 root hash, one per
line, optionally followed by extension lines. The server signs checkpoints
with :func:`sign_note`; members open them with :func:`open_note` and the
server's verifier key, then read them with :func:`parse_checkpoint`.

Key strings follow golang.org/x/mod/sumdb/note, so keys move between Hashfed
and the Go tooling of the transparency ecosystem::

    verifier key: <name>+<hex key hash>+<base64(0x01 || 32-byte public key)>
    signer key:   PRIVATE+KEY+<name>+<hex key hash>+<base64(0x01 || 32-byte seed)>

Every failure raises :class:`NoteError`; its message starts with
``malformed note``, ``invalid signature``, ``unverified note``,
``invalid key`` or ``malformed checkpoint``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "MAX_SIGNATURES",
    "Checkpoint",
    "NoteError",
    "format_checkpoint",
    "format_signer_key",
    "format_verifier_key",
    "key_hash",
    "open_note",
    "parse_checkpoint",
    "parse_signer_key",
    "parse_verifier_key",
    "sign_note",
]

# golang.org/x/mod/sumdb/note's limit; the spec asks for at least 16, and
# the cap keeps a hostile note from costing unbounded parsing.
MAX_SIGNATURES = 100

_ALG_ED25519 = b"\x01"
_KEY_HASH_SIZE = 4
_ED25519_KEY_SIZE = 32
_ED25519_SIGNATURE_SIZE = 64
_ROOT_HASH_SIZE = 32
_SIGNATURE_PREFIX = "\u2014 "  # em dash, space
# Tree sizes are uint64 in RFC 9162 and in every checkpoint parser we meet.
_MAX_TREE_SIZE = 2**64 - 1
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_HEX_KEY_HASH = re.compile(r"[0-9a-fA-F]{8}")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


class NoteError(Exception):
    """A signed note, checkpoint or key string is malformed or does not verify."""


@dataclass(frozen=True)
class Checkpoint:
    """A log's signed tree head: origin, tree size and RFC 9162 root hash."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Refuse a checkpoint that would format as text meaning something else."""
        if not self.origin or "\n" in self.origin or _CONTROL.search(self.origin):
            raise NoteError(f"malformed checkpoint: bad origin {self.origin!r}")
        if isinstance(self.size, bool) or not 0 <= self.size <= _MAX_TREE_SIZE:
            raise NoteError(f"malformed checkpoint: tree size {self.size!r} out of range")
        if len(self.root_hash) != _ROOT_HASH_SIZE:
            raise NoteError(
                f"malformed checkpoint: root hash has {len(self.root_hash)} bytes, "
                f"not {_ROOT_HASH_SIZE}"
            )
        for line in self.extensions:
            if not line or "\n" in line or _CONTROL.search(line):
                raise NoteError(f"malformed checkpoint: bad extension line {line!r}")


def format_checkpoint(cp: Checkpoint) -> str:
    """Return the note text of a checkpoint: origin, size, base64 root, extension lines."""
    lines = [cp.origin, str(cp.size), base64.b64encode(cp.root_hash).decode("ascii")]
    lines.extend(cp.extensions)
    return "".join(line + "\n" for line in lines)


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse checkpoint note text strictly; raise :class:`NoteError` on anything off.

    The size must be canonical decimal (no sign, no leading zeros), the root
    hash canonical standard base64 of 32 bytes, and every line non-empty.
    """
    if not text.endswith("\n"):
        raise NoteError("malformed checkpoint: text does not end with a newline")
    if _CONTROL.search(text):
        raise NoteError("malformed checkpoint: control character in text")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError(f"malformed checkpoint: {len(lines)} lines, need at least 3")
    if any(not line for line in lines):
        raise NoteError("malformed checkpoint: empty line")
    origin, size_line, root_line, *extensions = lines
    if not _DECIMAL.fullmatch(size_line):
        raise NoteError(f"malformed checkpoint: tree size {size_line!r} is not canonical decimal")
    # Length first: int() of thousands of digits is slow, and refused by Python.
    if len(size_line) > len(str(_MAX_TREE_SIZE)) or int(size_line) > _MAX_TREE_SIZE:
        raise NoteError(f"malformed checkpoint: tree size {size_line[:30]} exceeds 2**64 - 1")
    size = int(size_line)
    root = _decode_base64(root_line, "malformed checkpoint: root hash")
    if len(root) != _ROOT_HASH_SIZE:
        raise NoteError(
            f"malformed checkpoint: root hash has {len(root)} bytes, not {_ROOT_HASH_SIZE}"
        )
    return Checkpoint(origin, size, root, tuple(extensions))


def key_hash(name: str, public_key: Ed25519PublicKey) -> bytes:
    """Return the 4-byte key hash (key ID): SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + _ALG_ED25519 + _raw(public_key))
    return digest.digest()[:_KEY_HASH_SIZE]


def format_verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """Return ``<name>+<hex key hash>+<base64(0x01 || public key)>``."""
    _check_name(name, "invalid key")
    encoded = base64.b64encode(_ALG_ED25519 + _raw(public_key)).decode("ascii")
    return f"{name}+{key_hash(name, public_key).hex()}+{encoded}"


def parse_verifier_key(s: str) -> tuple[str, Ed25519PublicKey]:
    """Parse a verifier key string into its name and Ed25519 public key.

    Raises :class:`NoteError` if the string is malformed, names another
    algorithm, or its key hash does not match the name and key.
    """
    name, hash_hex, key_b64 = _split_key(s, "invalid key: verifier key")
    raw = _decode_key(key_b64, "invalid key: verifier key")
    public_key = Ed25519PublicKey.from_public_bytes(raw)
    if key_hash(name, public_key) != bytes.fromhex(hash_hex):
        raise NoteError(f"invalid key: key hash {hash_hex} does not match {name!r} and its key")
    return name, public_key


def format_signer_key(name: str, private_key: Ed25519PrivateKey) -> str:
    """Return ``PRIVATE+KEY+<name>+<hex key hash>+<base64(0x01 || seed)>``; keep it secret."""
    _check_name(name, "invalid key")
    seed = private_key.private_bytes_raw()
    encoded = base64.b64encode(_ALG_ED25519 + seed).decode("ascii")
    return f"PRIVATE+KEY+{name}+{key_hash(name, private_key.public_key()).hex()}+{encoded}"


def parse_signer_key(s: str) -> tuple[str, Ed25519PrivateKey]:
    """Parse a signer key string into its name and Ed25519 private key.

    The key hash is that of the public key, so it is checked after deriving
    the public key from the seed.
    """
    if not s.startswith("PRIVATE+KEY+"):
        raise NoteError("invalid key: signer key does not start with PRIVATE+KEY+")
    name, hash_hex, key_b64 = _split_key(s[len("PRIVATE+KEY+") :], "invalid key: signer key")
    seed = _decode_key(key_b64, "invalid key: signer key")
    private_key = Ed25519PrivateKey.from_private_bytes(seed)
    if key_hash(name, private_key.public_key()) != bytes.fromhex(hash_hex):
        raise NoteError(f"invalid key: key hash {hash_hex} does not match {name!r} and its key")
    return name, private_key


def sign_note(text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """Sign ``text`` with the key named ``name``; return the whole signed note.

    ``text`` must end with a newline and contain no control character other
    than newline, so that :func:`open_note` reads back exactly this text.
    """
    _check_text(text)
    _check_name(name, "malformed note")
    signature = private_key.sign(text.encode("utf-8"))
    encoded = base64.b64encode(key_hash(name, private_key.public_key()) + signature)
    return f"{text}\n{_SIGNATURE_PREFIX}{name} {encoded.decode('ascii')}\n"


def open_note(note: str | bytes, name: str, public_key: Ed25519PublicKey) -> str:
    """Verify ``note``'s signature by the key ``name``/``public_key``; return the note text.

    Signature lines of other keys (another name, or the same name with
    another key hash) are ignored as the spec requires, but must still be
    well formed. Every signature by this key must verify. Bytes must be
    UTF-8. Raises :class:`NoteError` if the note is malformed
    (``malformed note``), a signature by this key fails (``invalid
    signature``) or there is none (``unverified note``).
    """
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as err:
            raise NoteError(f"malformed note: not UTF-8 ({err.reason})") from None
    _check_utf8(note, "malformed note")
    if _CONTROL.search(note):
        raise NoteError("malformed note: control character other than newline")
    # The text ends at the last blank line: signature lines never contain one.
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("malformed note: no blank line before the signatures")
    text, signature_block = note[: split + 1], note[split + 2 :]
    if not signature_block or not signature_block.endswith("\n"):
        raise NoteError("malformed note: signature block is empty or does not end with a newline")
    lines = signature_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"malformed note: more than {MAX_SIGNATURES} signatures")

    wanted_hash = key_hash(name, public_key)
    message = text.encode("utf-8")
    verified = False
    for line in lines:
        signer, signed_hash, signature = _parse_signature_line(line)
        if signer != name or signed_hash != wanted_hash:
            continue
        if len(signature) != _ED25519_SIGNATURE_SIZE:
            raise NoteError(f"invalid signature: by {name}: {len(signature)} bytes, not 64")
        try:
            public_key.verify(signature, message)
        except InvalidSignature:
            raise NoteError(f"invalid signature: by {name}+{wanted_hash.hex()}") from None
        verified = True
    if not verified:
        raise NoteError(f"unverified note: no signature by {name}+{wanted_hash.hex()}")
    return text


def _parse_signature_line(line: str) -> tuple[str, bytes, bytes]:
    """Split ``— <name> <base64>`` into name, key hash and signature."""
    if not line.startswith(_SIGNATURE_PREFIX):
        raise NoteError(f"malformed note: signature line {line[:40]!r} lacks the em dash prefix")
    signer, _, encoded = line[len(_SIGNATURE_PREFIX) :].partition(" ")
    _check_name(signer, "malformed note")
    decoded = _decode_base64(encoded, "malformed note: signature")
    # A key hash and at least one byte of signature, as the Go reference demands.
    if len(decoded) <= _KEY_HASH_SIZE:
        raise NoteError(f"malformed note: signature by {signer} is only {len(decoded)} bytes")
    return signer, decoded[:_KEY_HASH_SIZE], decoded[_KEY_HASH_SIZE:]


def _split_key(s: str, what: str) -> tuple[str, str, str]:
    """Split ``<name>+<hex hash>+<base64>``; base64 may itself contain ``+``."""
    name, _, rest = s.partition("+")
    hash_hex, _, key_b64 = rest.partition("+")
    _check_name(name, what)
    if not _HEX_KEY_HASH.fullmatch(hash_hex):
        raise NoteError(f"{what}: key hash {hash_hex!r} is not 8 hex digits")
    return name, hash_hex, key_b64


def _decode_key(encoded: str, what: str) -> bytes:
    """Decode ``base64(0x01 || 32 bytes)`` and return the 32 bytes."""
    raw = _decode_base64(encoded, what)
    if not raw or raw[:1] != _ALG_ED25519:
        raise NoteError(f"{what}: unknown algorithm, only Ed25519 (0x01) is supported")
    if len(raw) != 1 + _ED25519_KEY_SIZE:
        raise NoteError(f"{what}: Ed25519 key has {len(raw) - 1} bytes, not 32")
    return raw[1:]


def _decode_base64(encoded: str, what: str) -> bytes:
    """Decode canonical standard base64 (padded, no stray bits), or raise NoteError."""
    try:
        raw = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise NoteError(f"{what} is not valid base64") from None
    # Refuse other spellings of the same bytes: signed text has one form.
    if base64.b64encode(raw).decode("ascii") != encoded:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def _check_name(name: str, what: str) -> None:
    """Key names are non-empty, without Unicode spaces, ``+`` or control characters."""
    if not name or "+" in name or any(c.isspace() for c in name) or _CONTROL.search(name):
        raise NoteError(f"{what}: invalid key name {name!r}")
    _check_utf8(name, what)


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("malformed note: text does not end with a newline")
    _check_utf8(text, "malformed note")
    if _CONTROL.search(text):
        raise NoteError("malformed note: control character other than newline in text")


def _check_utf8(value: str, what: str) -> None:
    # A str from surrogateescape decoding can hold lone surrogates: not UTF-8.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise NoteError(f"{what}: not valid UTF-8") from None


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
