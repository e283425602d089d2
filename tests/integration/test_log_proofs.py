"""Merkle log over the API: signed checkpoints, inclusion and consistency proofs."""

from __future__ import annotations

import base64

import pytest

from clients.client import FederationClient
from clients.errors import ForbiddenRole, MalformedRequest, NotFound
from federation.protocol.keys import load_private_key
from federation.protocol.merkle import leaf_hash, root_hash, verify_consistency, verify_inclusion
from federation.protocol.note import open_note, parse_checkpoint
from tests.conftest import Federation


async def checkpoint(
    client: FederationClient, fed: Federation, size: int | None = None
) -> tuple[int, bytes]:
    params = {"size": size} if size is not None else None
    note = (await client.request("GET", "/v1/log/checkpoint", params=params)).body.decode()
    public = load_private_key(fed.settings.log_key_path).public_key()
    cp = parse_checkpoint(open_note(note, fed.settings.origin, public))
    assert cp.origin == fed.settings.origin
    return cp.size, cp.root_hash


def _b(values: list[str]) -> list[bytes]:
    return [base64.b64decode(v) for v in values]


async def test_checkpoints_and_proofs(fed: Federation) -> None:
    member = await fed.admit("acme")
    async with fed.client(fed.governance) as gov, fed.client(member) as client:
        size1, root1 = await checkpoint(client, fed)
        assert size1 == 3  # genesis, first policy, admission
        for batch in range(3):
            await client.submit(
                [{"signal_type": "md5", "value": f"{batch:02x}{i:030x}", "labels": ["instruction"]}
                 for i in range(150)]
            )  # fmt: skip
        size2, root2 = await checkpoint(client, fed)
        assert size2 == size1 + 3 * 151
        # Every leaf, fetched as an auditor, is included in the latest checkpoint.
        leaves: list[bytes] = []
        start = 0
        while True:
            page = await gov.get_json("/v1/log/leaves", {"start": start, "limit": 100})
            leaves += [base64.b64decode(x["leaf"]) for x in page["leaves"]]
            if page["next"] is None:
                break
            start = page["next"]
        assert len(leaves) == size2
        assert root_hash([leaf_hash(x) for x in leaves]) == root2
        for index in (0, 1, 2, 150, 300, size2 - 1):
            proof = await client.get_json("/v1/log/proof/inclusion", {"index": index})
            assert base64.b64decode(proof["leaf_hash"]) == leaf_hash(leaves[index])
            verify_inclusion(leaf_hash(leaves[index]), index, size2, _b(proof["hashes"]), root2)
        # The old checkpoint is a prefix of the new one, and still served.
        proof = await client.get_json("/v1/log/proof/consistency", {"old_size": size1})
        verify_consistency(size1, size2, _b(proof["hashes"]), root1, root2)
        assert await checkpoint(client, fed, size1) == (size1, root1)


async def test_inclusion_by_statement_id(fed: Federation) -> None:
    member = await fed.admit("acme")
    async with fed.client(member) as client:
        result = await client.submit(
            [{"signal_type": "pdq", "value": "a" * 64, "labels": ["glorification"]}]
        )
        size, root = await checkpoint(client, fed)
        proof = await client.get_json(
            "/v1/log/proof/inclusion", {"statement": result["statement_id"]}
        )
        assert proof["index"] == result["leaf_index"]
        verify_inclusion(
            base64.b64decode(proof["leaf_hash"]), proof["index"], size, _b(proof["hashes"]), root
        )


async def test_proof_refusals(fed: Federation) -> None:
    member = await fed.admit("acme")
    async with fed.client(member) as client:
        with pytest.raises(NotFound):
            await client.get_json("/v1/log/proof/inclusion", {"index": 99})
        with pytest.raises(NotFound):
            await client.get_json("/v1/log/proof/inclusion", {"statement": "0" * 64})
        with pytest.raises(MalformedRequest):
            await client.get_json("/v1/log/proof/inclusion", {})
        with pytest.raises(MalformedRequest):
            await client.get_json("/v1/log/proof/consistency", {"old_size": 0})
        with pytest.raises(NotFound):
            await client.get_json("/v1/log/proof/consistency", {"old_size": 1, "size": 500})
        with pytest.raises(NotFound):
            await client.request("GET", "/v1/log/checkpoint", params={"size": 77})
        with pytest.raises(ForbiddenRole):
            await client.get_json("/v1/log/leaves")


async def test_proofs_stay_right_while_the_log_grows(fed: Federation) -> None:
    """The server caches tiles between requests; a tile that grew must be read again."""
    member = await fed.admit("acme")
    async with fed.client(fed.governance) as gov, fed.client(member) as client:
        checkpoints: list[tuple[int, bytes]] = [await checkpoint(client, fed)]
        for batch in range(5):
            await client.submit(
                [{"signal_type": "md5", "value": f"{batch:02x}{i:030x}", "labels": ["instruction"]}
                 for i in range(37 + 60 * batch)]
            )  # fmt: skip
            size, root = await checkpoint(client, fed)
            page = await gov.get_json("/v1/log/leaves", {"start": 0, "limit": size})
            hashes = [leaf_hash(base64.b64decode(x["leaf"])) for x in page["leaves"]]
            for index in sorted({0, size // 3, size - 2, size - 1}):
                proof = await client.get_json("/v1/log/proof/inclusion", {"index": index})
                assert proof["size"] == size
                assert base64.b64decode(proof["leaf_hash"]) == hashes[index]
                verify_inclusion(hashes[index], index, size, _b(proof["hashes"]), root)
            for old_size, old_root in checkpoints:
                proof = await client.get_json("/v1/log/proof/consistency", {"old_size": old_size})
                verify_consistency(old_size, size, _b(proof["hashes"]), old_root, root)
                # The proof against the older tree of that time is still served.
                past = await client.get_json(
                    "/v1/log/proof/inclusion", {"index": old_size - 1, "size": old_size}
                )
                verify_inclusion(
                    hashes[old_size - 1], old_size - 1, old_size, _b(past["hashes"]), old_root
                )
            checkpoints.append((size, root))
