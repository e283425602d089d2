"""Ed25519 keys: ids, files, and the base64 form used on the wire."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from federation.protocol.problems import HashfedError, Problem

KEY_ID_BYTES = 16
PUBLIC_KEY_BYTES = 32
PRIVATE_FILE_MODE = 0o600


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey | bytes) -> str:
    """A key's id: hex of the first 16 bytes of SHA-256 over the raw public key."""
    raw = public_key if isinstance(public_key, bytes) else raw_public_key(public_key)
    return hashlib.sha256(raw).digest()[:KEY_ID_BYTES].hex()


def encode_public_key(public_key: Ed25519PublicKey) -> str:
    """Standard base64 of the raw public key, as carried in statements."""
    return base64.b64encode(raw_public_key(public_key)).decode("ascii")


def decode_public_key(text: str) -> Ed25519PublicKey:
    """Parse the base64 form; raises ``HashfedError(STATEMENT_MALFORMED)``."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HashfedError(Problem.STATEMENT_MALFORMED, "public key is not valid base64") from exc
    if len(raw) != PUBLIC_KEY_BYTES:
        raise HashfedError(
            Problem.STATEMENT_MALFORMED,
            f"public key must be {PUBLIC_KEY_BYTES} bytes, got {len(raw)}",
        )
    return Ed25519PublicKey.from_public_bytes(raw)


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def write_private_key(
    path: Path, private_key: Ed25519PrivateKey, *, overwrite: bool = False
) -> None:
    """Write a PKCS#8 PEM private key, created with mode 0600 (never world-readable)."""
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        os.write(fd, pem)
    finally:
        os.close(fd)


def write_public_key(path: Path, public_key: Ed25519PublicKey) -> None:
    """Write a SubjectPublicKeyInfo PEM public key (readable by openssl)."""
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pem)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load a PEM private key; a clear error when it is not an Ed25519 key."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load a public key from a PEM file or a file holding the base64 raw key."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(data)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path} is not an Ed25519 public key")
        return key
    return decode_public_key(data.decode("ascii").strip())
