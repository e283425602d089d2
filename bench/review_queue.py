"""Review queue at scale: 100,000 pending submissions; list the first page, approve 1,000.

Goal (issue "Governance"): listing the first page and approving 1,000 in one
signed batch each take under 1 s on this machine. Runs a real server on a
socket (in this process) against SQLite, or PostgreSQL with --postgres URL.

    .venv/bin/python bench/review_queue.py [--pending 100000] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from aiohttp.test_utils import TestServer

from clients.client import FederationClient, Identity
from federation.api.app import create_app
from federation.bootstrap import init_federation
from federation.protocol.keys import generate_private_key, load_private_key
from federation.settings import Settings
from federation.store.db import Database

BATCH = 10_000
LABELS = ["glorification", "recruitment", "instruction", "imminent_credible_threat"]


async def run(pending: int, database_url: str | None, rounds: int) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="hashfed-review-"))
    settings = Settings(data_dir=data_dir, database_url=database_url or "", auto_approve=False)
    result = await asyncio.to_thread(init_federation, settings)
    db = Database(settings.resolved_database_url)
    server = TestServer(create_app(settings, db), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    gov = Identity(result.org, load_private_key(result.key_path))
    member_key, admin_key = generate_private_key(), generate_private_key()
    async with FederationClient(url, gov) as client:
        await client.admit_org("acme", "Acme", ["contributor"], member_key.public_key())
        await client.admit_org("reviewers", "Reviewers", ["admin"], admin_key.public_key())
    t0 = time.perf_counter()
    async with FederationClient(url, Identity("acme", member_key)) as member:
        for start in range(0, pending, BATCH):
            items = [
                {"signal_type": "pdq", "value": secrets.token_hex(32), "labels": [LABELS[i % 4]]}
                for i in range(min(BATCH, pending - start))
            ]
            await member.submit(items)
    print(f"loaded {pending:,} pending submissions in {time.perf_counter() - t0:.1f} s")

    list_times, approve_times = [], []
    async with FederationClient(url, Identity("reviewers", admin_key)) as admin:
        for _ in range(rounds):
            t = time.perf_counter()
            page = await admin.review_queue(limit=100)
            list_times.append(time.perf_counter() - t)
            assert len(page["items"]) == 100
        for _ in range(rounds):
            page = await admin.review_queue(limit=1000)
            decisions = [{"record": i["record"], "decision": "approve"} for i in page["items"]]
            t = time.perf_counter()
            outcome = await admin.review(decisions)
            approve_times.append(time.perf_counter() - t)
            assert outcome["counts"]["accepted"] == 1000, outcome["counts"]
    await server.close()
    await db.close()

    backend = "postgres" if database_url else "sqlite"
    print(f"machine: {os.cpu_count()} CPU ({platform.processor() or platform.machine()}), "
          f"Python {platform.python_version()}, backend {backend}")  # fmt: skip
    for name, times, goal in (
        ("list first page (100)", list_times, 1.0),
        ("approve 1,000 in one signed batch", approve_times, 1.0),
    ):
        median, worst = statistics.median(times), max(times)
        verdict = "ok" if worst < goal else "MISS"
        print(f"{name:<36} median {median * 1000:7.1f} ms   max {worst * 1000:7.1f} ms   "
              f"goal < {goal:.0f} s: {verdict}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--postgres", metavar="URL", help="postgresql+asyncpg://… database")
    args = parser.parse_args()
    asyncio.run(run(args.pending, args.postgres, args.rounds))


if __name__ == "__main__":
    main()
