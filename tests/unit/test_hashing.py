"""Hashing files into signals, and ``hashfed hash`` output that ``hashfed push`` accepts."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clients.cli.main import cli
from clients.matching.hashing import (
    HASHERS,
    PDQ_MIN_QUALITY,
    classify,
    hash_file,
    hash_paths,
    iter_files,
    pdq_from_image,
)
from clients.push import read_inputs
from federation.protocol.signals import SIGNAL_TYPES, pdq

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors" / "pdq"
ORIGINAL_PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
EDITS = sorted(p for p in VECTORS.glob("*.jpg") if p.name != "aaa-orig.jpg")


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_the_reference_photo_and_its_edits() -> None:
    value, quality = pdq_from_image((VECTORS / "aaa-orig.jpg").read_bytes())
    assert (value, quality) == (ORIGINAL_PDQ, 100)
    assert len(EDITS) == 11
    for edit in EDITS:
        edited, _ = pdq_from_image(edit.read_bytes())
        assert pdq.pdq_distance(ORIGINAL_PDQ, edited) <= 16, edit.name


def test_an_image_gives_pdq_and_digests(tmp_path: Path) -> None:
    result = hash_file(VECTORS / "aaa-orig.jpg")
    assert result.kind == "image" and result.error is None and not result.warnings
    by_type = {s.signal_type: s for s in result.signals}
    assert set(by_type) == {"pdq", "md5", "sha1", "sha256"}
    assert by_type["pdq"].value == ORIGINAL_PDQ and by_type["pdq"].reliable
    data = (VECTORS / "aaa-orig.jpg").read_bytes()
    assert by_type["sha256"].value == hashlib.sha256(data).hexdigest()
    assert by_type["md5"].value == hashlib.md5(data).hexdigest()


def test_a_flat_image_is_unreliable(tmp_path: Path) -> None:
    flat = tmp_path / "flat.png"
    Image.new("RGB", (200, 200), (30, 30, 30)).save(flat)
    signal = next(s for s in hash_file(flat).signals if s.signal_type == "pdq")
    assert signal.quality is not None and signal.quality < PDQ_MIN_QUALITY
    assert not signal.reliable


def test_kinds_videos_url_lists_and_other_files(tmp_path: Path) -> None:
    video = tmp_path / "clip.bin"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    urls = tmp_path / "links.txt"
    urls.write_text(
        "https://Example.COM:443/a/./b?x=1#frag\n# a comment\n\nnot a url\n"
        "https://example.com/a/b?x=1\nhttp://other.example/\n"
    )
    other = tmp_path / "notes.pdf"
    other.write_bytes(b"%PDF-1.7 hello")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")

    assert classify("x.mkv", b"") == "video"
    assert classify("x.dat", b"\x1a\x45\xdf\xa3....") == "video"
    assert classify("x.dat", b"\x89PNG\r\n\x1a\n") == "image"

    clip = hash_file(video)
    assert clip.kind == "video"
    assert [s.signal_type for s in clip.signals] == ["video_md5"]

    listed = hash_file(urls)
    assert listed.kind == "urls"
    assert [(s.source, s.value) for s in listed.signals] == [
        (f"{urls}:1", "https://example.com/a/b?x=1"),  # the repeat on line 5 is dropped
        (f"{urls}:6", "http://other.example/"),
    ]
    assert len(listed.warnings) == 1 and listed.warnings[0].startswith(f"{urls}:4: ")

    assert {s.signal_type for s in hash_file(other).signals} == {"md5", "sha1", "sha256"}

    damaged = hash_file(broken)
    assert damaged.kind == "image" and "PDQ not computed" in damaged.warnings[0]
    assert {s.signal_type for s in damaged.signals} == {"md5", "sha1", "sha256"}


def test_unreadable_inputs_are_skipped_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    (tmp_path / "ok.txt").write_text("hello")
    errors: list[str] = []
    files = list(iter_files([tmp_path, tmp_path / "missing"], errors.append))
    assert [Path(f).name for f in files] == ["dangling", "ok.txt"]
    assert errors == [f"{tmp_path / 'missing'}: no such file or directory"]
    results = [hash_file(f) for f in files]
    assert results[0].error is not None and not results[0].signals
    assert results[1].error is None


def test_every_hasher_is_a_registered_signal_type() -> None:
    assert set(HASHERS) <= set(SIGNAL_TYPES)


def test_parallel_hashing_gives_the_serial_results(tmp_path: Path) -> None:
    for n in range(10):
        (tmp_path / f"f{n}.bin").write_bytes(bytes([n]) * 1000)
    files = list(iter_files([VECTORS, tmp_path], pytest.fail))
    assert len(files) >= 16
    serial = list(hash_paths(files, workers=1))
    seen: list[str] = []
    parallel = list(hash_paths(files, workers=2, progress=lambda r: seen.append(r.path)))
    assert parallel == serial
    assert seen == files


def test_hash_cli_writes_what_push_accepts(tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "links.txt").write_text("https://example.com/x\n")
    (tmp_path / "copy.jpg").write_bytes((VECTORS / "aaa-orig.jpg").read_bytes())
    Image.new("RGB", (64, 64)).save(tmp_path / "black.png")
    args = ["hash", "--csv", "--labels", "recruitment;glorification", str(tmp_path), str(VECTORS)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "signal_type,value,labels"
    assert f"pdq,{ORIGINAL_PDQ},glorification;recruitment" in lines
    csv_file = tmp_path / "out.csv"
    csv_file.write_text(result.stdout)
    parsed = read_inputs([csv_file])
    assert parsed.bad == []
    # The copy repeats the original's digests: one line per distinct signal.
    assert len(parsed.items) == len(lines) - 1 == len(set(lines[1:]))
    # The black image's PDQ is unreliable and left out (its digests are not).
    assert "left out 1 PDQ" in result.stderr

    as_json = runner.invoke(cli, ["hash", "--json", "--labels", "recruitment", str(tmp_path)])
    assert as_json.exit_code == 0
    items = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert {"signal_type": "url", "value": "https://example.com/x", "labels": ["recruitment"]} in (
        items
    )
    jsonl = tmp_path / "out.jsonl"
    jsonl.write_text(as_json.stdout)
    assert read_inputs([jsonl]).bad == []


def test_hash_cli_refuses_unknown_labels_and_reports_unreadable_files(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(cli, ["hash", "--csv", "--labels", "bogus", str(VECTORS)])
    assert bad.exit_code == 2 and "unknown label 'bogus'" in bad.stderr
    (tmp_path / "ok.txt").write_text("hello")
    partial = runner.invoke(cli, ["hash", str(tmp_path / "ok.txt"), str(tmp_path / "nope")])
    assert partial.exit_code == 1
    assert "skipped" in partial.stderr and "nope" in partial.stderr
    assert "ok.txt" in partial.stdout
