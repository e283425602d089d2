"""Audit at scale: build a ~1,000,000-leaf federation through the API, then audit it whole.

Goal (issue "Provenance"): ``hashfed audit verify`` fully audits a
1,000,000-leaf federation in under 60 s on the reference machine.

The federation is built through the real API: ``hashfed server init`` and
``hashfed server run`` (a subprocess on a free port; SQLite by default, or a
fresh database on ``--postgres URL``), and :class:`FederationClient` for every
statement. Mostly submissions in signed batches of 5,000-10,000 items (one
statement leaf + one version leaf per item), plus admissions, policy changes,
a review backlog approved (and partly rejected) in batches of 1,000 with one
and then two approvals required, opinions, disputes voted to quorum (retract
and uphold with relabelling), overlapping contributions, withdrawals, a key
rotation (add, switch, retire), a suspension and a key revocation.

Then it times a full audit twice, each with a fresh leaf cache:

1. the real command, ``hashfed --profile auditor --json audit verify --log-key …
   --governance-key … --cache …`` in a subprocess, as the governance
   organisation (admin + auditor);
2. the library function :func:`clients.audit.audit` in this process.

and checks each report is clean. ``--reuse DIR`` keeps the built federation
(data directory, and the PostgreSQL database) in DIR and reuses it next time.
``--profile DIR`` adds a third, profiled run of the command (py-spy on the
auditor and on the server) and prints the hotspots.

    .venv/bin/python bench/audit.py [--leaves 1000000] [--postgres URL] [--reuse DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

# Run as a script, this directory is on sys.path: the benches share bench/common.py.
from common import (
    DEFAULT_PG_ADMIN_URL,
    CpuMeter,
    child_env,
    collapsed_hotspots,
    file_tail,
    hashfed_command,
    install_sigterm,
    loadavg,
    log,
    machine_info,
    machine_lines,
    pg_create,
    pg_database_url,
    pg_drop,
    pg_exists,
    print_hotspots,
    py_spy,
    rss_peak_mib,
    run_checked,
    running_server,
    server_init,
    spawn,
    stop_process_group,
)

from clients.audit import AuditReport, audit, parse_public_key
from clients.client import FederationClient, Identity
from federation.log.checkpoints import CheckpointSigner
from federation.protocol.keys import encode_public_key, generate_private_key, load_private_key
from federation.protocol.signals import normalize_signal, record_id

GOAL_S = 60.0
LABELS = ("glorification", "recruitment", "instruction", "imminent_credible_threat")
ORIGIN = "hashfed.local/federation"  # the server's default origin
META = "bench.json"
KEEP_VALUES = 40_000  # values remembered per organisation (overlap, opinions, disputes)


# ---------------------------------------------------------------- the federation


@dataclass
class Built:
    """A built federation, as kept in ``DIR/bench.json`` for ``--reuse``."""

    backend: str
    database_url: str
    pg_database: str | None
    target_leaves: int
    seed: int
    leaves: int = 0
    build_seconds: float = 0.0
    build_leaves_per_s: float = 0.0
    statements: dict[str, int] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)
    complete: bool = False


class Builder:
    """Builds the workload through signed API calls."""

    def __init__(self, url: str, gov: Identity, args: argparse.Namespace) -> None:
        self.url = url
        self.args = args
        self.rng = random.Random(args.seed)
        self.gov = FederationClient(url, gov)
        self.clients: dict[str, FederationClient] = {"governance": self.gov}
        self.keys: dict[str, Identity] = {}
        self.values: dict[str, list[tuple[str, str]]] = {}
        self.statements: Counter[str] = Counter()
        self.items: Counter[str] = Counter()
        self.size = 0

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()

    # Plumbing

    async def _open(self, org: str, identity: Identity) -> FederationClient:
        client = FederationClient(self.url, identity, timeout_s=600)
        await client.__aenter__()
        old = self.clients.get(org)
        if old is not None:
            await old.close()
        self.clients[org] = client
        self.keys[org] = identity
        return client

    async def _sent(self, kind: str, result: dict[str, Any]) -> dict[str, Any]:
        self.statements[kind] += 1
        counts = result.get("counts") or {}
        if counts.get("refused"):
            refused = next(r for r in result["results"] if r["status"] == "refused")
            raise RuntimeError(f"{kind}: the server refused an item: {refused}")
        self.items[kind] += counts.get("accepted", 0)
        return result

    async def refresh_size(self) -> int:
        self.size = int((await self.gov.me())["log_size"])
        return self.size

    def _item(self, org: str) -> dict[str, Any]:
        rng = self.rng
        if rng.random() < 0.6:
            signal_type, value = "pdq", f"{rng.getrandbits(256):064x}"
        else:
            signal_type, value = "md5", f"{rng.getrandbits(128):032x}"
        first = rng.randrange(len(LABELS))
        labels = [LABELS[first]]
        if rng.random() < 0.25:
            labels.append(LABELS[(first + 1) % len(LABELS)])
        item: dict[str, Any] = {"signal_type": signal_type, "value": value, "labels": labels}
        if rng.random() < 0.05:
            item["ref"] = f"case-{rng.getrandbits(32):08x}"
        kept = self.values.setdefault(org, [])
        if len(kept) < KEEP_VALUES:
            kept.append((signal_type, value))
        return item

    def _batch_sizes(self, leaves: int) -> list[int]:
        """Batch sizes in [batch_min, batch_max] whose statements + versions make ``leaves``."""
        sizes: list[int] = []
        low, high = self.args.batch_min, self.args.batch_max
        while leaves > high + 1:
            n = self.rng.randint(low, high)
            sizes.append(n)
            leaves -= n + 1
        if leaves > 1:
            sizes.append(leaves - 1)
        return sizes

    async def submit_leaves(self, orgs: Sequence[str], leaves: int, kind: str) -> None:
        """Submit new signals from ``orgs`` in turn, ``leaves`` log leaves in all."""
        sizes = self._batch_sizes(leaves)
        batches = iter(
            (orgs[i % len(orgs)], [self._item(orgs[i % len(orgs)]) for _ in range(n)])
            for i, n in enumerate(sizes)
        )
        done = 0

        async def worker() -> None:
            nonlocal done
            for org, items in batches:
                await self._sent(kind, await self.clients[org].submit(items))
                done += 1
                if done % 20 == 0:
                    log(f"  {kind}: {done}/{len(sizes)} batches")

        await asyncio.gather(*(worker() for _ in range(self.args.concurrency)))
        await self.refresh_size()

    async def fill_to(self, orgs: Sequence[str], target: int, kind: str) -> None:
        await self.refresh_size()
        if target > self.size + 1:
            await self.submit_leaves(orgs, target - self.size, kind)

    # The workload

    async def build(self) -> None:
        T = self.args.leaves
        await self.gov.__aenter__()
        log("admissions")
        roles = {
            "acme": ("consumer", "contributor"),
            "beta": ("consumer", "contributor"),
            "gamma": ("consumer", "contributor"),
            "delta": ("contributor",),
            "rev-a": ("admin",),
            "rev-b": ("admin",),
            "watch": ("consumer",),
        }
        for org, org_roles in roles.items():
            key = generate_private_key()
            await self._sent(
                "org.admit", await self.gov.admit_org(org, org.title(), org_roles, key.public_key())
            )
            await self._open(org, Identity(org, key))

        log(f"auto-approved submissions to {int(0.55 * T):,} leaves")
        await self.fill_to(("acme", "beta", "gamma"), int(0.55 * T), "submissions")

        log("overlap: beta also submits 10,000 of acme's signals")
        shared = self.values["acme"][:10_000]
        for start in range(0, len(shared), 5_000):
            items = [
                {"signal_type": t, "value": v, "labels": ["recruitment"]}
                for t, v in shared[start : start + 5_000]
            ]
            await self._sent("submissions (overlap)", await self.clients["beta"].submit(items))

        log("key rotation: acme adds a key, switches to it, retires the old one")
        old_acme = self.keys["acme"]
        new_key = generate_private_key()
        await self._sent("key.add", await self.gov.add_key("acme", new_key.public_key()))
        await self._open("acme", Identity("acme", new_key))
        await self.submit_leaves(("acme",), self.args.batch_max + 1, "submissions")
        await self._sent(
            "key.retire",
            await self.gov.set_key_status("acme", old_acme.key_id, revoke=False, note="rotated"),
        )

        log("review: auto-approve off; delta's submissions wait for review")
        await self._sent(
            "policy.set", await self.gov.update_policy(auto_approve=False, approvals_required=1)
        )
        pending_leaves = int(0.08 * T)
        await self.submit_leaves(("delta",), pending_leaves, "submissions (pending)")
        approve_batches = max(1, int(0.6 * pending_leaves / 1000))
        for n in range(approve_batches):
            page = await self.clients["rev-a"].review_queue(limit=1000, contributor="delta")
            decisions = [{"record": i["record"], "decision": "approve"} for i in page["items"]]
            await self._sent("reviews (approve)", await self.clients["rev-a"].review(decisions))
            if n % 10 == 9:
                log(f"  approved {n + 1}/{approve_batches} batches of 1,000")
        page = await self.clients["rev-b"].review_queue(limit=1000, contributor="delta")
        rejects = [
            {"record": i["record"], "decision": "reject", "reason": "low_quality"}
            for i in page["items"]
        ]
        await self._sent("reviews (reject)", await self.clients["rev-b"].review(rejects))
        page = await self.clients["rev-b"].review_queue(limit=100, contributor="delta")
        changes = [
            {"record": i["record"], "decision": "request_changes", "note": "add the source URL"}
            for i in page["items"]
        ]
        await self._sent("reviews (request changes)", await self.clients["rev-b"].review(changes))

        log("review: two approvals required for 10,000 more")
        await self._sent("policy.set", await self.gov.update_policy(approvals_required=2))
        first = len(self.values["delta"])
        await self.submit_leaves(("delta",), 10_001, "submissions (pending)")
        ids = [record_id(t, normalize_signal(t, v)) for t, v in self.values["delta"][first:]]
        for admin in ("rev-a", "rev-b"):
            for start in range(0, len(ids), 1000):
                decisions = [
                    {"record": r, "decision": "approve"} for r in ids[start : start + 1000]
                ]
                await self._sent("reviews (approve)", await self.clients[admin].review(decisions))
        await self._sent("policy.set", await self.gov.update_policy(approvals_required=1))

        log("opinions")
        acme = [record_id(t, normalize_signal(t, v)) for t, v in self.values["acme"][:KEEP_VALUES]]
        seen = acme[20_000:25_000]
        for start in range(0, len(seen), 1000):
            opinions = [{"record": r, "kind": "seen"} for r in seen[start : start + 1000]]
            await self._sent("opinions", await self.clients["watch"].opine(opinions))
        flagged = [{"record": r, "kind": "false_positive"} for r in seen[:500]]
        await self._sent("opinions", await self.clients["beta"].opine(flagged))

        log("disputes: quorum 2, retract and uphold with relabelling")
        await self._sent("policy.set", await self.gov.update_policy(dispute_quorum=2))
        for n, rid in enumerate(acme[30_000:30_008]):
            opener = "gamma" if n % 2 else "watch"
            opened = await self._sent(
                "dispute.open",
                await self.clients[opener].open_dispute(
                    rid, "false_positive" if n % 3 else "wrong_labels", f"bench dispute {n}"
                ),
            )
            dispute = opened["results"][0]["dispute"]
            outcome = "retract" if n % 2 else "uphold"
            labels = ["instruction"] if n % 4 == 0 else None
            for admin in ("rev-a", "rev-b"):
                await self._sent(
                    "dispute.resolve",
                    await self.clients[admin].resolve_dispute(
                        dispute, outcome, "agreed", labels if outcome == "uphold" else None
                    ),
                )

        log("withdrawals: gamma withdraws 3,000 contributions")
        gamma = self.values["gamma"][:3000]
        for start in range(0, len(gamma), 1000):
            items = [{"signal_type": t, "value": v} for t, v in gamma[start : start + 1000]]
            await self._sent(
                "withdrawals", await self.clients["gamma"].withdraw(items, reason="bench")
            )

        log("suspension, reinstatement, revocation")
        await self._sent(
            "org.suspend", await self.gov.set_org_status("beta", suspend=True, note="audit of beta")
        )
        await self._sent(
            "org.reinstate", await self.gov.set_org_status("beta", suspend=False, note="cleared")
        )
        await self._sent(
            "key.revoke",
            await self.gov.set_key_status(
                "delta", self.keys["delta"].key_id, revoke=True, note="leaked"
            ),
        )

        log(f"auto-approve on again; submissions to {T:,} leaves")
        await self._sent("policy.set", await self.gov.update_policy(auto_approve=True))
        await self.fill_to(("acme", "beta", "gamma"), T, "submissions")


async def build(args: argparse.Namespace, work: Path, built: Built) -> None:
    data_dir = work / "var"
    log(f"building a {args.leaves:,}-leaf federation in {work} ({built.backend})")
    t0 = time.perf_counter()
    await server_init(data_dir, built.database_url, work / "server.log")
    async with running_server(data_dir, built.database_url, work / "server.log") as server:
        gov = Identity("governance", load_private_key(data_dir / "keys" / "governance.key"))
        builder = Builder(server.url, gov, args)
        try:
            await builder.build()
        finally:
            await builder.close()
    built.build_seconds = round(time.perf_counter() - t0, 1)
    built.leaves = builder.size
    built.build_leaves_per_s = round(builder.size / built.build_seconds)
    built.statements = dict(sorted(builder.statements.items()))
    built.items = dict(sorted(builder.items.items()))
    built.complete = True
    log(
        f"built {built.leaves:,} leaves in {built.build_seconds:,.1f} s "
        f"({built.build_leaves_per_s:,} leaves/s)"
    )


# ---------------------------------------------------------------- auditing


@dataclass
class AuditRun:
    how: str
    seconds: float  # wall, as the caller sees it
    report_seconds: float  # the report's own figure
    leaves: int
    ok: bool
    violations: int
    first_violations: list[str]
    auditor_cpu_s: float
    server_cpu_s: float
    other_cpu_s: float
    download_replay_s: float | None = None
    compare_s: float | None = None
    signatures: int = 0
    versions: int = 0
    records: int = 0
    feed_items: int = 0
    auditor_peak_rss_mib: float | None = None
    error: str | None = None  # the audit could not finish: why

    @property
    def leaves_per_s(self) -> float:
        return self.leaves / self.seconds if self.seconds else 0.0


def _run_from_report(
    how: str, data: dict[str, Any], meter: CpuMeter, auditor_cpu: float, **extra: Any
) -> AuditRun:
    violations = data.get("violations") or []
    return AuditRun(
        how=how,
        seconds=round(meter.seconds, 2),
        report_seconds=data.get("seconds", 0.0),
        leaves=data.get("leaves", 0),
        ok=bool(data.get("ok")),
        violations=len(violations),
        first_violations=[
            f"{v.get('index')} {v.get('check')}: {v.get('detail')}" for v in violations[:5]
        ],
        auditor_cpu_s=round(auditor_cpu, 1),
        server_cpu_s=round(meter.server_cpu_s, 1),
        other_cpu_s=round(meter.other_cpu_s, 1),
        signatures=data.get("signatures_verified", 0),
        versions=data.get("versions_checked", 0),
        records=data.get("records_compared", 0),
        feed_items=data.get("feed_items_compared", 0),
        **extra,
    )


async def audit_cli(
    server_url: str,
    server_pid: int,
    work: Path,
    log_key: str,
    gov_public: str,
    profile_dir: Path | None = None,
) -> AuditRun:
    """``hashfed audit verify`` in a subprocess, as the governance organisation."""
    home = work / "cli-home"
    env = child_env(HASHFED_HOME=str(home))
    cache = work / "audit-cache.ndjson"
    cache.unlink(missing_ok=True)
    cli_log = work / "audit-cli.log"
    key = work / "var" / "keys" / "governance.key"
    code = await run_checked(
        [
            *hashfed_command(),
            "profile",
            "add",
            "auditor",
            "--server",
            server_url,
            "--org",
            "governance",
            "--key",
            str(key),
        ],
        cli_log,
        env,
    )
    if code != 0:
        raise RuntimeError(f"hashfed profile add failed:\n{file_tail(cli_log)}")
    out = work / "audit-report.json"
    out.unlink(missing_ok=True)
    args = [
        *hashfed_command(),
        "--profile",
        "auditor",
        "--json",
        "audit",
        "verify",
        "--log-key",
        log_key,
        "--governance-key",
        gov_public,
        "--cache",
        str(cache),
    ]
    how = "hashfed audit verify" + (" (py-spy)" if profile_dir else "")
    log(f"running: {how}")
    with CpuMeter(server_pid) as meter:
        process = spawn(args, cli_log, env, stdout_path=out)
        try:
            if profile_dir is None:
                code = await asyncio.to_thread(process.wait)
            else:
                async with (
                    py_spy(process.pid, profile_dir / "auditor.txt"),
                    py_spy(server_pid, profile_dir / "server.txt"),
                ):
                    code = await asyncio.to_thread(process.wait)
        finally:
            stop_process_group(process)
    if code not in (0, 1):
        raise RuntimeError(f"hashfed audit verify exited with {code}:\n{file_tail(cli_log)}")
    cache.unlink(missing_ok=True)
    try:
        data = orjson.loads(out.read_bytes())
    except orjson.JSONDecodeError:
        lines = [line for line in file_tail(cli_log).splitlines() if line.strip()]
        log(f"hashfed audit verify exited with {code} and no report:\n{file_tail(cli_log)}")
        error = f"exit {code}: {lines[-1][:300] if lines else 'no output'} (log {cli_log})"
        return _failed(how, meter, meter.children_cpu_s, error)
    return _run_from_report(how, data, meter, meter.children_cpu_s)


def _failed(how: str, meter: CpuMeter, auditor_cpu: float, error: str) -> AuditRun:
    return AuditRun(
        how=how,
        seconds=round(meter.seconds, 2),
        report_seconds=0.0,
        leaves=0,
        ok=False,
        violations=0,
        first_violations=[],
        auditor_cpu_s=round(auditor_cpu, 1),
        server_cpu_s=round(meter.server_cpu_s, 1),
        other_cpu_s=round(meter.other_cpu_s, 1),
        error=error,
    )


async def audit_in_process(
    server_url: str, server_pid: int, work: Path, gov: Identity, log_key: str, gov_public: str
) -> AuditRun:
    """:func:`clients.audit.audit` in this process (the client's default timeout)."""
    origin, log_public = parse_public_key(log_key)
    _, gov_key = parse_public_key(gov_public)
    cache = work / "audit-cache-inprocess.ndjson"
    cache.unlink(missing_ok=True)
    marks: dict[str, float] = {}

    def progress(done: int, total: int) -> None:
        if done >= total and "downloaded" not in marks:
            marks["downloaded"] = time.perf_counter()

    log("running: audit() in process")
    error: str | None = None
    with CpuMeter(server_pid) as meter:
        try:
            async with FederationClient(server_url, gov) as client:
                report: AuditReport = await audit(
                    client,
                    log_key=log_public,
                    origin=origin or ORIGIN,
                    governance_key=gov_key,
                    cache=cache,
                    progress=progress,
                )
        except Exception as exc:  # the product's failure is a finding: report it
            error = f"{type(exc).__name__}: {str(exc)[:300]}"
            log(f"audit() failed: {error}")
    cache.unlink(missing_ok=True)
    if error is not None:
        return _failed("audit() in process", meter, meter.own_cpu_s, error)
    download = marks.get("downloaded", meter.t0 + meter.seconds) - meter.t0
    return _run_from_report(
        "audit() in process",
        report.to_json(),
        meter,
        meter.own_cpu_s,
        download_replay_s=round(download, 1),
        compare_s=round(meter.seconds - download, 1),
        auditor_peak_rss_mib=rss_peak_mib(os.getpid()) or None,
    )


# ---------------------------------------------------------------- the run


async def prepare(args: argparse.Namespace, work: Path) -> Built:
    """Reuse the federation in ``work`` if complete and matching, else (re)build it."""
    backend = "postgres" if args.postgres else "sqlite"
    meta = work / META
    if meta.exists():
        built = Built(**orjson.loads(meta.read_bytes()))
        same = (
            built.backend == backend
            and built.target_leaves == args.leaves
            and built.seed == args.seed
        )
        alive = built.pg_database is None or (
            args.postgres is not None and await pg_exists(args.postgres, built.pg_database)
        )
        if built.complete and same and alive:
            log(f"reusing the {built.leaves:,}-leaf federation in {work}")
            return built
        log(f"{work} holds another or an incomplete build: discarding it")
        await discard(args, work, built)
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    pg_name = await pg_create(args.postgres, "hashfed_bench_audit") if args.postgres else None
    url = (
        pg_database_url(args.postgres, pg_name)
        if pg_name
        else f"sqlite+aiosqlite:///{(work / 'var' / 'hashfed.db').resolve()}"
    )
    built = Built(backend, url, pg_name, args.leaves, args.seed)
    meta.write_bytes(orjson.dumps(asdict(built)))  # so an interrupted build is cleaned up
    await build(args, work, built)
    meta.write_bytes(orjson.dumps(asdict(built), option=orjson.OPT_INDENT_2))
    return built


async def discard(args: argparse.Namespace, work: Path, built: Built | None) -> None:
    meta = work / META
    if built is None and meta.exists():  # a build that failed half-way: its database too
        built = Built(**orjson.loads(meta.read_bytes()))
    if built is not None and built.pg_database and args.postgres:
        await pg_drop(args.postgres, built.pg_database)
    shutil.rmtree(work, ignore_errors=True)


async def run(args: argparse.Namespace) -> int:
    install_sigterm()
    machine, load_start = machine_info(), loadavg()
    reuse = args.reuse is not None
    work = args.reuse.resolve() if reuse else Path(tempfile.mkdtemp(prefix="hashfed-audit-"))
    built: Built | None = None
    runs: list[AuditRun] = []
    try:
        built = await prepare(args, work)
        data_dir = work / "var"
        signer = CheckpointSigner.from_file(ORIGIN, data_dir / "keys" / "log.key")
        gov_private = load_private_key(data_dir / "keys" / "governance.key")
        gov_public = encode_public_key(gov_private.public_key())
        gov = Identity("governance", gov_private)
        async with running_server(data_dir, built.database_url, work / "server.log") as server:
            log(f"server pid {server.pid} on {server.url}")
            for _ in range(args.rounds):
                if not args.skip_cli:
                    runs.append(
                        await audit_cli(
                            server.url, server.pid, work, signer.verifier_key, gov_public
                        )
                    )
                if not args.skip_in_process:
                    runs.append(
                        await audit_in_process(
                            server.url, server.pid, work, gov, signer.verifier_key, gov_public
                        )
                    )
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
                runs.append(
                    await audit_cli(
                        server.url, server.pid, work, signer.verifier_key, gov_public, args.profile
                    )
                )
    except Exception:
        log(f"failed; the server's log ends with:\n{file_tail(work / 'server.log', 4000)}")
        raise
    finally:
        if not reuse:
            await discard(args, work, built)
            log(f"removed {work}")
    show(args, machine, load_start, loadavg(), built, runs)
    return 0 if runs and all(r.ok for r in runs) else 1


def show(
    args: argparse.Namespace,
    machine: dict[str, Any],
    load_start: str,
    load_end: str,
    built: Built | None,
    runs: list[AuditRun],
) -> None:
    assert built is not None
    print()
    for line in machine_lines(machine, load_start, load_end):
        print(line)
    print(f"backend: {built.backend}   leaves: {built.leaves:,}")
    print(
        f"build (through the API, this run or a cached one): {built.build_seconds:,.1f} s = "
        f"{built.build_leaves_per_s:,} leaves/s"
    )
    print("  statements: " + ", ".join(f"{k} {v:,}" for k, v in built.statements.items()))
    print("  items accepted: " + ", ".join(f"{k} {v:,}" for k, v in built.items.items() if v))
    print()
    header = (
        f"{'audit':<34} {'wall s':>7} {'report s':>8} {'leaves/s':>9} {'clean':>6} "
        f"{'auditor cpu':>11} {'server cpu':>10} {'other cpu':>9} {'goal <60 s':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in runs:
        verdict = "FAILED" if r.error else "ok" if r.seconds < GOAL_S else "MISS"
        clean = "-" if r.error else "yes" if r.ok else f"NO ({r.violations})"
        print(
            f"{r.how:<34} {r.seconds:>7.1f} {r.report_seconds:>8.1f} {r.leaves_per_s:>9,.0f} "
            f"{clean:>6} {r.auditor_cpu_s:>10.1f}s {r.server_cpu_s:>9.1f}s "
            f"{r.other_cpu_s:>8.1f}s {verdict:>10}"
        )
    for r in runs:
        if r.error:
            print(f"\n{r.how}: FAILED after {r.seconds:.1f} s: {r.error}")
            continue
        print(
            f"\n{r.how}: {r.leaves:,} leaves, {r.signatures:,} signatures, "
            f"{r.versions:,} versions replayed, {r.records:,} records and "
            f"{r.feed_items:,} feed items compared"
        )
        if r.download_replay_s is not None:
            print(
                f"  download + replay {r.download_replay_s} s, then records + feed comparison "
                f"{r.compare_s} s"
            )
        for v in r.first_violations:
            print(f"  violation: {v}")
    print(
        "\nwall s: as the caller sees it (the command's includes interpreter start-up); "
        "auditor cpu: the audit process;\nserver cpu: the hashfed server process; other cpu: "
        "the rest of the machine meanwhile (PostgreSQL, other users)."
    )
    if args.profile is not None:
        own = ("clients/", "federation/")
        print_hotspots(
            "auditor (hashfed audit verify) hotspots",
            collapsed_hotspots(args.profile / "auditor.txt", own),
        )
        print_hotspots(
            "server hotspots during the audit", collapsed_hotspots(args.profile / "server.txt", own)
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--leaves", type=int, default=1_000_000, help="log size to build")
    parser.add_argument("--batch-min", type=int, default=5_000)
    parser.add_argument("--batch-max", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=2, help="submissions in flight")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="audits of each kind")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        nargs="?",
        const=DEFAULT_PG_ADMIN_URL,
        help=f"PostgreSQL server (asyncpg URL allowed to CREATE DATABASE; default "
        f"{DEFAULT_PG_ADMIN_URL}); a fresh database is created and dropped (kept with --reuse)",
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        metavar="DIR",
        help="keep the built federation in DIR and reuse it when it matches",
    )
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="add a py-spy-profiled run of the command; print the hotspots",
    )
    args = parser.parse_args(argv)
    if args.leaves < 200_000:
        parser.error("--leaves must be at least 200,000 (the workload's fixed parts need room)")
    if not 1 <= args.batch_min <= args.batch_max:
        parser.error("need 1 <= --batch-min <= --batch-max")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return asyncio.run(run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted: server stopped" + ("" if args.reuse else ", data removed"))
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
