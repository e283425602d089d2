"""The server's ingest path without HTTP: signed submission batches through :class:`Intake`.

``bench/push_pull.py`` measures the whole push over sockets; this script
isolates what the server does with a statement once its request is
authenticated: open the envelope, verify the signature, validate the items,
take the append lock, apply them, write records, contributions, leaves,
tiles and a signed checkpoint. It runs in one process, on one core, so its
CPU time per record is steady even on a busy machine, which makes it the
figure to watch while changing the append path.

Batches are signed before the clock starts (that is the client's work). The
database is created by ``hashfed server init``'s own code (Alembic to head,
genesis and first policy).

    .venv/bin/python bench/ingest.py [--records 200000] [--batch 50000]
        [--postgres URL] [--concurrency 2] [--profile out.pstats] [--again]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script, this directory is on sys.path: the benches share bench/common.py.
from common import code_state, loadavg, log, machine_info
from push_pull import generate_items

from federation.bootstrap import init_federation
from federation.identities.service import Principal
from federation.intake import Intake
from federation.log.checkpoints import CheckpointSigner
from federation.protocol.keys import (
    encode_public_key,
    generate_private_key,
    key_id,
    load_private_key,
)
from federation.protocol.statements import Envelope, StatementType, sign_statement
from federation.records.checking import ItemChecker
from federation.serve import GC_THRESHOLDS
from federation.settings import Settings
from federation.store.db import Database

ORG = "bench"


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    url = args.postgres or f"sqlite+aiosqlite:///{work / 'hashfed.db'}"
    settings = Settings(data_dir=work / "var", database_url=url)
    result = await asyncio.to_thread(init_federation, settings)
    db = Database(url)
    intake = Intake(
        db,
        CheckpointSigner.from_file(settings.origin, settings.log_key_path),
        ItemChecker(args.check_processes),
    )
    gov_key = load_private_key(result.key_path)
    governance = Principal(result.org, result.key_id, frozenset({"admin", "auditor"}))
    member_key = generate_private_key()
    admit = sign_statement(
        {
            "type": StatementType.ORG_ADMIT.value,
            "subject": ORG,
            "name": "Bench",
            "roles": ["consumer", "contributor"],
            "public_key": encode_public_key(member_key.public_key()),
        },
        gov_key,
        key_id=result.key_id,
        org=result.org,
    )
    await intake.accept(governance, admit.envelope(), {StatementType.ORG_ADMIT})
    member = Principal(ORG, key_id(member_key.public_key()), frozenset({"contributor", "consumer"}))

    items = generate_items(args.records, args.seed)

    def signed_batches() -> list[Envelope]:
        envelopes: list[Envelope] = []
        for start in range(0, len(items), args.batch):
            payload = {
                "type": StatementType.SUBMISSIONS.value,
                "items": items[start : start + args.batch],
            }
            signed = sign_statement(payload, member_key, key_id=member.key_id, org=ORG)
            # What the route hands to the intake: an envelope parsed from the request body.
            body = json.dumps(signed.envelope().model_dump())
            envelopes.append(Envelope.model_validate_json(body))
        return envelopes

    async def ingest(envelopes: list[Envelope], profile: str | None) -> dict[str, Any]:
        queue = list(reversed(envelopes))
        counts = {"accepted": 0, "duplicate": 0, "refused": 0}

        async def worker() -> None:
            while queue:
                outcome = await intake.accept(member, queue.pop(), {StatementType.SUBMISSIONS})
                for status, n in outcome.result["counts"].items():
                    counts[status] += n

        profiler = cProfile.Profile() if profile else None
        threads0 = thread_cpu_s()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        if profiler and profile:
            profiler.disable()
            profiler.dump_stats(profile)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        threads = {n: round(t - threads0.get(n, 0.0), 2) for n, t in thread_cpu_s().items()}
        return {
            "counts": counts,
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "records_per_s": round(args.records / wall),
            "records_per_cpu_s": round(args.records / cpu),
            "us_cpu_per_record": round(cpu / args.records * 1e6, 2),
            "thread_cpu_s": threads,
        }

    envelopes = signed_batches()
    log(f"signed {len(envelopes)} batches of {args.batch}; ingesting")
    # As the server does (federation/serve.py) once it has started.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    figures = await ingest(envelopes, args.profile)
    if figures["counts"]["accepted"] != args.records:
        raise SystemExit(f"accepted {figures['counts']['accepted']} of {args.records}")
    if args.again:
        # The same items in new statements (a member pushing its list again):
        # every item is a duplicate, so every record is read and nothing written.
        log("signing the same items again; ingesting them as duplicates")
        again = await ingest(signed_batches(), None)
        if again["counts"]["duplicate"] != args.records:
            raise SystemExit(f"{again['counts']} for {args.records} repeated items")
        figures["again"] = again
    await db.close()
    intake.checker.close()
    return {
        "records": args.records,
        "batch": args.batch,
        "backend": "postgres" if args.postgres else "sqlite",
        **figures,
    }


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds of each thread of this process: the event loop, and the database's."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            key = "main" if task.name == str(os.getpid()) else f"{name}-{task.name}"
            out[key] = (int(fields[11]) + int(fields[12])) / tick
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=2, help="statements in flight")
    parser.add_argument(
        "--check-processes", type=int, default=1,
        help="helper processes checking items, as the server's --check-processes (0: in-process)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--postgres", metavar="URL", help="an empty PostgreSQL database URL")
    parser.add_argument("--profile", metavar="FILE", help="write cProfile stats of the ingest")
    parser.add_argument(
        "--again", action="store_true",
        help="then push the same items again in new statements (every item a duplicate)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    load_start = loadavg()
    with tempfile.TemporaryDirectory(prefix="hf-ingest-") as tmp:
        figures = asyncio.run(run(args, Path(tmp)))
    figures.update(machine=machine_info(), code=code_state(), load=[load_start, loadavg()])
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    shown = ("backend", "records", "batch", "counts", "wall_s", "cpu_s", "records_per_s",
             "records_per_cpu_s", "us_cpu_per_record", "thread_cpu_s", "again", "load",
             "code")  # fmt: skip
    for key in shown:
        if key in figures:
            print(f"{key:>20}: {figures[key]}")


if __name__ == "__main__":
    main()
