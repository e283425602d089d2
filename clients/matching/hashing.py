"""Hashing files into signals: the hashers of the signal types that can be computed here.

:data:`HASHERS` maps a registered signal type to how a member computes it
from a file; the types themselves (validation, normalisation, distance) stay
in :mod:`federation.protocol.signals`, shared with the server. Adding a
computable type is adding a :class:`Hasher` here for a type of the registry.

What a file yields depends on its kind:

- **image** (decoded by Pillow): ``pdq`` with its quality (0-100; below
  :data:`PDQ_MIN_QUALITY` the hash is unreliable and is not matched or
  exported by default), and ``md5``, ``sha1``, ``sha256`` of its bytes;
- **video** (by extension or container signature): ``video_md5`` of its
  bytes. vPDQ is not computed: the ``vpdq`` package builds only against the
  FFmpeg development libraries and the registry has no ``vpdq`` type yet;
- **urls** (a UTF-8 text file whose first line is an http(s) URL): one
  normalised ``url`` per line (blank lines and ``#`` comments skipped);
- **file** (anything else): ``md5``, ``sha1``, ``sha256`` of its bytes.

:func:`hash_paths` walks directories and hashes files in parallel across
processes; an unreadable file gives a :class:`FileHashes` with an ``error``
instead of stopping the run.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from federation.protocol.problems import HashfedError
from federation.protocol.signals import SIGNAL_TYPES, normalize_signal

__all__ = [
    "HASHERS",
    "PDQ_MIN_QUALITY",
    "FileHashes",
    "HashedSignal",
    "Hasher",
    "classify",
    "hash_file",
    "hash_paths",
    "iter_files",
    "pdq_from_image",
]

PDQ_MIN_QUALITY = 50  # below this, PDQ of flat or tiny images collides too often to act on
READ_CHUNK_BYTES = 1 << 20
MAX_URL_LIST_BYTES = 64 << 20  # a text file of URLs larger than this is hashed as a file
# Below this many files the pool's start-up (a Python with numpy and Pillow per
# worker, ~0.5 s) costs more than it saves.
MIN_FILES_FOR_POOL = 16

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".flv", ".wmv", ".mpg", ".mpeg",
     ".3gp", ".ts", ".mts", ".ogv"}
)  # fmt: skip
URL_LIST_EXTENSIONS = frozenset({".txt", ".url", ".urls", ".lst", ".list"})

KIND_IMAGE = "image"
KIND_VIDEO = "video"
KIND_URLS = "urls"
KIND_FILE = "file"


@dataclass(frozen=True, slots=True)
class HashedSignal:
    """One signal computed from an input: where from, its type and normalised value.

    ``quality`` is PDQ's own quality score (0-100), None for other types.
    """

    source: str  # the file, or FILE:LINE for a URL read from a list
    signal_type: str
    value: str
    quality: int | None = None

    @property
    def reliable(self) -> bool:
        """Whether the hash is good enough to match or share (PDQ quality >= 50)."""
        return self.quality is None or self.quality >= PDQ_MIN_QUALITY

    def to_json(self) -> dict[str, Any]:
        """The signal with its source and quality, for ``--json`` outputs that keep them."""
        data: dict[str, Any] = {
            "source": self.source,
            "signal_type": self.signal_type,
            "value": self.value,
        }
        if self.quality is not None:
            data["quality"] = self.quality
            data["reliable"] = self.reliable
        return data


@dataclass
class FileHashes:
    """Everything computed from one file; ``error`` set when the file could not be read."""

    path: str
    kind: str
    signals: list[HashedSignal] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class Hasher:
    """How a member computes one signal type from a file of the given ``kinds``.

    ``digest`` is a hashlib constructor for types computed from the bytes
    (streamed); types computed from the decoded content have none and are
    produced by the kind's reader (:func:`pdq_from_image`, the URL reader).
    """

    signal_type: str
    kinds: frozenset[str]
    digest: Callable[[], Any] | None = None
    description: str = ""


def _hashers(*hashers: Hasher) -> Mapping[str, Hasher]:
    for hasher in hashers:
        if hasher.signal_type not in SIGNAL_TYPES:
            raise ValueError(f"no signal type {hasher.signal_type!r} in the registry")
    return MappingProxyType({h.signal_type: h for h in hashers})


_BYTES_KINDS = frozenset({KIND_IMAGE, KIND_FILE})
HASHERS: Mapping[str, Hasher] = _hashers(
    Hasher("pdq", frozenset({KIND_IMAGE}), description="PDQ of the decoded image (pdqhash)"),
    Hasher("md5", _BYTES_KINDS, hashlib.md5, "MD5 of the file's bytes"),
    Hasher("sha1", _BYTES_KINDS, hashlib.sha1, "SHA-1 of the file's bytes"),
    Hasher("sha256", _BYTES_KINDS, hashlib.sha256, "SHA-256 of the file's bytes"),
    Hasher("video_md5", frozenset({KIND_VIDEO}), hashlib.md5, "MD5 of the video file's bytes"),
    Hasher("url", frozenset({KIND_URLS}), description="each line of a text file of URLs"),
)


# Classifying


def _looks_like_video(head: bytes) -> bool:
    return (
        head[4:8] == b"ftyp"  # ISO base media: mp4, mov, 3gp
        or head[:4] == b"\x1a\x45\xdf\xa3"  # Matroska / WebM
        or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")
        or head[:3] == b"FLV"
        or head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")  # MPEG program/video
    )


def _looks_like_image(head: bytes) -> bool:
    return (
        head[:3] == b"\xff\xd8\xff"  # JPEG
        or head[:8] == b"\x89PNG\r\n\x1a\n"
        or head[:6] in (b"GIF87a", b"GIF89a")
        or head[:2] == b"BM"
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
        or head[:4] in (b"II*\x00", b"MM\x00*")  # TIFF
    )


def _looks_like_url_list(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf").lstrip().lower()
    return text.startswith((b"http://", b"https://"))


def classify(path: str | Path, head: bytes) -> str:
    """The kind of a file from its name and first bytes: image, video, urls or file."""
    suffix = Path(path).suffix.lower()
    if _looks_like_image(head) or (suffix in IMAGE_EXTENSIONS and not _looks_like_video(head)):
        return KIND_IMAGE
    if _looks_like_video(head) or suffix in VIDEO_EXTENSIONS:
        return KIND_VIDEO
    if _looks_like_url_list(head):
        return KIND_URLS
    return KIND_FILE


# Hashing one file


def pdq_from_image(data: bytes) -> tuple[str, int]:
    """(PDQ as 64 hex characters, quality 0-100) of an encoded image.

    The image is decoded by Pillow as RGB (the first frame of an animation)
    and hashed by ``pdqhash``, which gives the reference implementation's
    hashes on Pillow's pixels. Raises ``ValueError`` if it cannot be decoded.
    """
    import numpy as np
    import pdqhash  # type: ignore[import-untyped]
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # A big image is hashed all the same; a decompression bomb still raises.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                pixels = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot decode the image ({exc})") from None
    bits, quality = pdqhash.compute(pixels)
    return bytes(np.packbits(np.asarray(bits, dtype=np.uint8))).hex(), int(quality)


def _digests(kind: str) -> dict[str, Any]:
    return {
        name: hasher.digest()
        for name, hasher in HASHERS.items()
        if hasher.digest is not None and kind in hasher.kinds
    }


def _read_url_list(path: str, data: bytes, result: FileHashes) -> None:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        result.warnings.append(f"{path}: not UTF-8 text; hashed as a file")
        result.kind = KIND_FILE
        return
    seen: set[str] = set()
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            value = normalize_signal("url", stripped)
        except HashfedError as err:
            result.warnings.append(f"{path}:{number}: {err.detail}")
            continue
        if value not in seen:
            seen.add(value)
            result.signals.append(HashedSignal(f"{path}:{number}", "url", value))


def hash_file(path: str | Path) -> FileHashes:
    """Every signal this client can compute from the file at ``path``; never raises for I/O."""
    name = str(path)
    data = b""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
            kind = classify(name, head)
            if kind == KIND_URLS and os.fstat(fh.fileno()).st_size > MAX_URL_LIST_BYTES:
                kind = KIND_FILE
            result = FileHashes(name, kind)
            if kind in (KIND_IMAGE, KIND_URLS):
                data = head + fh.read()  # decoded whole anyway
            else:
                digests = _digests(kind)
                chunk = head
                while chunk:
                    for digest in digests.values():
                        digest.update(chunk)
                    chunk = fh.read(READ_CHUNK_BYTES)
    except OSError as exc:
        return FileHashes(name, "unreadable", error=exc.strerror or str(exc))
    if kind == KIND_URLS:
        _read_url_list(name, data, result)
    if result.kind in (KIND_IMAGE, KIND_FILE) and kind != KIND_FILE:
        digests = _digests(result.kind)
        for digest in digests.values():
            digest.update(data)
    if result.kind == KIND_IMAGE:
        try:
            value, quality = pdq_from_image(data)
        except ValueError as exc:
            result.warnings.append(f"{name}: {exc}; PDQ not computed")
        else:
            result.signals.append(HashedSignal(name, "pdq", value, quality))
    if result.kind != KIND_URLS:
        for signal_type, digest in digests.items():
            result.signals.append(HashedSignal(name, signal_type, digest.hexdigest()))
    return result


# Many files


def iter_files(paths: Iterable[str | Path], on_error: Callable[[str], None]) -> Iterator[str]:
    """The files named by ``paths``, directories walked recursively in sorted order.

    Symbolic links to directories are not followed (no loops). ``on_error``
    is told about a path that does not exist or a directory that cannot be
    listed; the walk goes on.
    """
    for path in paths:
        text = str(path)
        if os.path.isdir(text):

            def report(err: OSError) -> None:
                on_error(f"{err.filename}: {err.strerror or err}")

            for root, dirs, files in os.walk(text, onerror=report):
                dirs.sort()
                for file_name in sorted(files):
                    yield os.path.join(root, file_name)
        elif os.path.lexists(text):
            yield text
        else:
            on_error(f"{text}: no such file or directory")


def hash_paths(
    files: Sequence[str],
    *,
    workers: int | None = None,
    progress: Callable[[FileHashes], None] | None = None,
) -> Iterator[FileHashes]:
    """Hash ``files`` (see :func:`iter_files`), in parallel across ``workers`` processes.

    Results come in the order of ``files``; ``progress`` is called after each.
    ``workers`` defaults to the number of cores; few files are hashed in this
    process.
    """
    count = workers if workers is not None else (os.cpu_count() or 1)
    if count <= 1 or len(files) < MIN_FILES_FOR_POOL:
        for path in files:
            result = hash_file(path)
            if progress is not None:
                progress(result)
            yield result
        return
    # spawn, not fork: the caller may run threads (a progress bar's refresher).
    context = multiprocessing.get_context("spawn")
    chunk = max(1, min(64, len(files) // (count * 8)))
    with ProcessPoolExecutor(max_workers=count, mp_context=context) as pool:
        for result in pool.map(hash_file, files, chunksize=chunk):
            if progress is not None:
                progress(result)
            yield result
