"""hashfed withdraw, through the real command line."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from clients.profiles import Profile, ProfileStore
from federation.protocol.keys import write_private_key
from tests.conftest import Federation

HASHFED = str(Path(sys.executable).parent / "hashfed")
MD5 = "d41d8cd98f00b204e9800998ecf8427e"


async def run(home: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        HASHFED, *args, env={**os.environ, "HASHFED_HOME": str(home)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_withdraw_makes_a_tombstone(fed: Federation, tmp_path: Path) -> None:
    member = await fed.admit("acme")
    key = tmp_path / "acme.key"
    write_private_key(key, member.private_key)
    ProfileStore(tmp_path).add(Profile("acme", fed.url, "acme", str(key), str(tmp_path / "s.db")))
    async with fed.client(member) as client:
        await client.submit([{"signal_type": "md5", "value": MD5, "labels": ["recruitment"]}])
        code, _, err = await run(tmp_path, "withdraw", f"md5:{MD5.upper()}", "--reason", "mistake")
        assert code == 0, err
        assert (await client.feed_page())["items"][-1]["state"] == "withdrawn"
        code, _, err = await run(tmp_path, "withdraw", f"md5:{MD5}")
        assert code == 1 and "no active contribution" in err  # nothing left to withdraw
        code, _, err = await run(tmp_path, "withdraw", "nonsense")
        assert code == 2 and "TYPE:VALUE" in err
