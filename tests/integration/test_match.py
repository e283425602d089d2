"""``hashfed match`` on the real photos against a pulled store, and ``POST /v1/match``.

A member pushes the original photo's PDQ hash (and its MD5), governance
approves it, a consumer pulls; then every edited copy is found at the default
threshold with its distance, an unrelated image is not, a dispute shows, and
a retraction stops the match after the next pull (the index updated, not
rebuilt). Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from PIL import Image

from clients import sync_feed
from clients.client import FederationClient
from clients.errors import FederationError
from clients.matching.hashing import pdq_from_image
from clients.matching.local import LocalMatcher
from clients.store import LocalStore
from federation.protocol.problems import Problem
from federation.protocol.signals import record_id
from tests.conftest import Federation

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors" / "pdq"
HASHFED = str(Path(sys.executable).parent / "hashfed")
CLI_TIMEOUT_S = 120
ORIGINAL = VECTORS / "aaa-orig.jpg"
EDITS = sorted(p for p in VECTORS.glob("*.jpg") if p != ORIGINAL)
ORIGINAL_PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
ORIGINAL_MD5 = hashlib.md5(ORIGINAL.read_bytes()).hexdigest()
PDQ_RECORD = record_id("pdq", ORIGINAL_PDQ)
MD5_RECORD = record_id("md5", ORIGINAL_MD5)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def hashfed(*args: str, stdin: bytes | None = None) -> Result:
    """Run the real command line (asynchronously: the server runs in this event loop)."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    proc = await asyncio.create_subprocess_exec(
        HASHFED,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), CLI_TIMEOUT_S)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@dataclass
class World:
    fed: Federation
    gov: FederationClient
    acme: FederationClient  # contributor and consumer
    beta: FederationClient  # another member, who disputes
    store: Path

    async def pull(self) -> None:
        with LocalStore.open(self.store) as store:
            await sync_feed.pull(self.acme, store, stream=False)


@pytest.fixture
async def world(fed: Federation, tmp_path: Path) -> AsyncIterator[World]:
    gov = fed.client(fed.governance)
    acme = fed.client(await fed.admit("acme"))
    beta = fed.client(await fed.admit("beta"))
    for client in (gov, acme, beta):
        await client.__aenter__()
    await gov.update_policy(auto_approve=False)  # governance approves explicitly
    await acme.submit(
        [
            {"signal_type": "pdq", "value": ORIGINAL_PDQ, "labels": ["glorification"]},
            {"signal_type": "md5", "value": ORIGINAL_MD5, "labels": ["glorification"]},
        ]
    )
    decided = await gov.review(
        [{"record": r, "decision": "approve"} for r in (PDQ_RECORD, MD5_RECORD)]
    )
    assert decided["counts"]["accepted"] == 2
    world = World(fed, gov, acme, beta, tmp_path / "acme.db")
    await world.pull()
    yield world


def unrelated_image(path: Path) -> Path:
    """A picture with structure (so PDQ quality is high) that is not the bridge photo."""
    y, x = np.mgrid[0:480, 0:640]
    pixels = np.stack(
        [(x * 0.4) % 256, (np.sin(y / 23.0) * 120 + 128), ((x + y) // 3) % 256], axis=-1
    )
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=92)
    return path


async def test_every_edit_matches_with_its_distance(world: World, tmp_path: Path) -> None:
    files = [str(p) for p in [ORIGINAL, *EDITS]]
    result = await hashfed("match", "--store", str(world.store), "--json", *files)
    assert result.code == 0, result
    report = result.json()
    assert report["matched"] is True and report["threshold"] == 31
    pdq_matches = {m["source"]: m for m in report["matches"] if m["signal_type"] == "pdq"}
    assert set(pdq_matches) == set(files)
    hashes = await asyncio.to_thread(
        lambda: {p: pdq_from_image(Path(p).read_bytes())[0] for p in files}
    )
    for path in files:
        found = pdq_matches[path]
        expected = hashes[path]
        distance = (int(expected, 16) ^ int(ORIGINAL_PDQ, 16)).bit_count()
        assert found["distance"] == distance <= 31
        assert found["record"] == PDQ_RECORD and found["matched_value"] == ORIGINAL_PDQ
        assert (found["state"], found["labels"], found["contributors"]) == (
            "approved", ["glorification"], ["acme"],
        )  # fmt: skip
    # The original's bytes also match its MD5 exactly.
    md5_matches = [m for m in report["matches"] if m["signal_type"] == "md5"]
    assert [(m["source"], m["record"], m["distance"]) for m in md5_matches] == [
        (str(ORIGINAL), MD5_RECORD, 0)
    ]
    # The table shows the same, one line per match.
    table = await hashfed("match", "--store", str(world.store), str(EDITS[0]))
    assert table.code == 0
    assert PDQ_RECORD in table.out and "approved" in table.out and "glorification" in table.out


async def test_an_unrelated_image_does_not_match(world: World, tmp_path: Path) -> None:
    other = unrelated_image(tmp_path / "street.jpg")
    value, quality = pdq_from_image(other.read_bytes())
    assert quality >= 50
    assert (int(value, 16) ^ int(ORIGINAL_PDQ, 16)).bit_count() > 31
    result = await hashfed("match", "--store", str(world.store), str(other))
    assert result.code == 1, result
    assert "0 match(es)" in result.err
    # Nothing matched and an input could not be read: 2, not a clean "no match".
    missing = await hashfed("match", "--store", str(world.store), str(other), "/no/such/file")
    assert missing.code == 2


async def test_matching_listed_hashes(world: World, tmp_path: Path) -> None:
    hashes = await hashfed("hash", "--csv", str(EDITS[3]), str(ORIGINAL))
    assert hashes.code == 0
    listed = tmp_path / "hashes.csv"
    listed.write_text(hashes.out)
    result = await hashfed("match", "--store", str(world.store), "--json", "--hashes", str(listed))
    assert result.code == 0
    records = sorted((m["signal_type"], m["record"]) for m in result.json()["matches"])
    assert records == sorted([("pdq", PDQ_RECORD), ("pdq", PDQ_RECORD), ("md5", MD5_RECORD)])
    # JSON Lines on stdin; a tight threshold leaves out the far edit.
    shrunk, _ = pdq_from_image((VECTORS / "shrink-a-lot.jpg").read_bytes())
    line = orjson.dumps({"signal_type": "pdq", "value": shrunk.upper()})
    tight = await hashfed(
        "match", "--store", str(world.store), "--threshold", "8", "--hashes", "-", stdin=line
    )
    assert tight.code == 1
    loose = await hashfed("match", "--store", str(world.store), "--hashes", "-", stdin=line)
    assert loose.code == 0
    bad = await hashfed(
        "match", "--store", str(world.store), "--hashes", "-", stdin=b'{"signal_type": "pdq"}\n'
    )
    assert bad.code == 2 and "signal_type" in bad.err


async def test_disputes_show_and_retractions_stop_matching(world: World) -> None:
    edit = str(VECTORS / "blur-a-lot.jpg")
    opened = await world.beta.open_dispute(PDQ_RECORD, "false_positive", "a tourist photo")
    dispute = opened["results"][0]["dispute"]
    await world.pull()
    disputed = await hashfed("match", "--store", str(world.store), "--json", edit)
    assert disputed.code == 0
    states = {m["signal_type"]: m["state"] for m in disputed.json()["matches"]}
    assert states == {"pdq": "disputed"}
    undisputed = await hashfed("match", "--store", str(world.store), "--only-undisputed", edit)
    assert undisputed.code == 1

    await world.gov.resolve_dispute(dispute, "retract", "not violent extremist content")
    # Before the next pull the local copy still holds the record.
    assert (await hashfed("match", "--store", str(world.store), edit)).code == 0
    await world.pull()
    with LocalMatcher.open(world.store) as matcher:
        # The index took the tombstone incrementally; it was not rebuilt.
        assert (matcher.report.action, matcher.report.removed) == ("updated", 1)
        assert matcher.report.held == 0
    retracted = await hashfed("match", "--store", str(world.store), edit)
    assert retracted.code == 1, retracted
    # The MD5 record was not disputed: the original's bytes still match exactly.
    original = await hashfed("match", "--store", str(world.store), "--json", str(ORIGINAL))
    assert [m["signal_type"] for m in original.json()["matches"]] == ["md5"]


async def test_the_index_follows_pulls_incrementally(world: World) -> None:
    with LocalMatcher.open(world.store) as matcher:
        assert matcher.report.action == "rebuilt" and matcher.report.held == 1
    with LocalMatcher.open(world.store) as matcher:
        assert matcher.report.action == "unchanged"
    other = "0" * 63 + "1"
    await world.acme.submit([{"signal_type": "pdq", "value": other, "labels": ["recruitment"]}])
    await world.gov.review([{"record": record_id("pdq", other), "decision": "approve"}])
    await world.pull()
    with LocalMatcher.open(world.store) as matcher:
        report = matcher.report
        assert (report.action, report.added, report.removed, report.held) == ("updated", 1, 0, 2)
    # A resync replaces the store's rows: the index notices and still agrees.
    with LocalStore.open(world.store) as store:
        await sync_feed.pull(world.acme, store, stream=False, resync=True)
    with LocalMatcher.open(world.store) as matcher:
        assert matcher.report.held == 2
        assert [m.record.record for m in matcher.match([_pdq(other)])[0]] == [
            record_id("pdq", other)
        ]


def _pdq(value: str) -> Any:
    from federation.protocol.matching import Query

    return Query("pdq", value)


async def test_no_store_yet_is_exit_2(tmp_path: Path) -> None:
    result = await hashfed("match", "--store", str(tmp_path / "none.db"), str(ORIGINAL))
    assert result.code == 2 and "hashfed pull" in result.err


# Server lookup


async def server_match(client: FederationClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.request("POST", "/v1/match", body=orjson.dumps(body))
    result: dict[str, Any] = response.json()
    return result


async def test_server_lookup(world: World) -> None:
    edits = [pdq_from_image(p.read_bytes())[0] for p in EDITS]
    unrelated = "0f" * 32
    signals = [{"signal_type": "pdq", "value": v} for v in [*edits, unrelated]]
    signals += [
        {"signal_type": "md5", "value": ORIGINAL_MD5.upper()},
        {"signal_type": "md5", "value": "not-hex"},
    ]
    answer = await server_match(world.acme, {"signals": signals})
    results = answer["results"]
    assert len(results) == len(signals)
    for value, result in zip(edits, results, strict=False):
        (found,) = result["matches"]
        assert found["record"] == PDQ_RECORD
        assert found["distance"] == (int(value, 16) ^ int(ORIGINAL_PDQ, 16)).bit_count()
        assert (found["state"], found["labels"], found["contributors"]) == (
            "approved", ["glorification"], ["acme"],
        )  # fmt: skip
    assert results[len(edits)]["matches"] == []
    assert results[-2]["matches"][0]["record"] == MD5_RECORD
    assert results[-1]["problem"]["type"] == Problem.INVALID_SIGNAL.uri
    assert answer["matched"] == len(edits) + 1

    # Disputed records are flagged, or left out on request; retracted ones never match.
    opened = await world.beta.open_dispute(PDQ_RECORD, "false_positive", "a tourist photo")
    one = {"signals": [{"signal_type": "pdq", "value": edits[0]}]}
    flagged = await server_match(world.acme, one)
    assert flagged["results"][0]["matches"][0]["state"] == "disputed"
    assert (await server_match(world.acme, {**one, "only_undisputed": True}))["matched"] == 0
    await world.gov.resolve_dispute(opened["results"][0]["dispute"], "retract", "not TVEC")
    assert (await server_match(world.acme, one))["matched"] == 0
    # A new approved record is found without restarting the server.
    other = "0" * 63 + "1"
    await world.acme.submit([{"signal_type": "pdq", "value": other, "labels": ["recruitment"]}])
    await world.gov.review([{"record": record_id("pdq", other), "decision": "approve"}])
    near = {"signals": [{"signal_type": "pdq", "value": "0" * 62 + "ff"}], "threshold": 8}
    assert (await server_match(world.acme, near))["results"][0]["matches"][0]["distance"] == 7


async def test_server_lookup_refusals(world: World) -> None:
    too_many = {"signals": [{"signal_type": "md5", "value": ORIGINAL_MD5}] * 1001}
    with pytest.raises(FederationError) as caught:
        await server_match(world.acme, too_many)
    assert caught.value.problem == Problem.MALFORMED_REQUEST
    with pytest.raises(FederationError) as caught:
        await server_match(world.acme, {"signals": [], "threshold": 99})
    assert caught.value.problem == Problem.MALFORMED_REQUEST
    contributor_only = world.fed.client(await world.fed.admit("gamma", ("contributor",)))
    async with contributor_only:
        with pytest.raises(FederationError) as caught:
            await server_match(contributor_only, {"signals": []})
    assert caught.value.problem == Problem.FORBIDDEN_ROLE


async def test_server_lookup_is_rate_limited_per_organisation(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from federation.api import match as match_api

    # The limiter is made at the first lookup, with these (no lookup ran before).
    monkeypatch.setattr(match_api, "MATCH_BURST_SIGNALS", 1500)
    monkeypatch.setattr(match_api, "MATCH_SIGNALS_PER_S", 10)
    batch = {"signals": [{"signal_type": "md5", "value": ORIGINAL_MD5}] * 1000}
    await server_match(world.acme, batch)
    body = orjson.dumps(batch)
    url = world.acme.url("/v1/match")
    headers = world.acme.signed_headers("POST", url, body)
    async with world.acme.session.post(url, data=body, headers=headers) as response:
        assert response.status == 429
        problem = await response.json(content_type=None)
        assert problem["type"] == Problem.RATE_LIMITED.uri
        # About 500 signals short, at 10 a second.
        assert 40 <= int(response.headers["Retry-After"]) <= 50
    # Another organisation has its own bucket.
    assert (await server_match(world.beta, batch))["matched"] == 1000
