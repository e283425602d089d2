"""Organisations and keys: admission, rotation, retirement, revocation, suspension."""

from __future__ import annotations

import pytest

from clients.client import Identity
from clients.errors import (
    Conflict,
    ForbiddenRole,
    KeyRetired,
    NotFound,
    StatementMalformed,
)
from federation.protocol.keys import generate_private_key, key_id
from tests.conftest import Federation


async def test_admit_lists_and_refuses_a_second_admission(fed: Federation) -> None:
    member = await fed.admit("acme", ("contributor", "consumer"))
    async with fed.client(fed.governance) as gov:
        orgs = {o["id"]: o for o in await gov.list_orgs()}
        assert orgs["acme"]["roles"] == ["consumer", "contributor"]
        assert orgs["acme"]["keys"][0]["key_id"] == member.key_id
        assert orgs["governance"]["roles"] == ["admin", "auditor"]
        with pytest.raises(Conflict):
            await gov.admit_org("acme", "Again", ["consumer"], generate_private_key().public_key())
        with pytest.raises(StatementMalformed, match="unknown role"):
            await gov.admit_org("newco", "New", ["superuser"], generate_private_key().public_key())
        with pytest.raises(Conflict, match="already registered"):
            await gov.admit_org("copyco", "Copy", ["consumer"], member.private_key.public_key())


async def test_members_see_themselves_but_not_others(fed: Federation) -> None:
    alpha = await fed.admit("alpha")
    await fed.admit("beta")
    async with fed.client(alpha) as client:
        me = await client.get_json("/v1/orgs/alpha")
        assert me["id"] == "alpha"
        with pytest.raises(ForbiddenRole):
            await client.get_json("/v1/orgs/beta")
        with pytest.raises(ForbiddenRole):
            await client.list_orgs()
        who = await client.me()
        assert (who["org"], who["key_id"]) == ("alpha", alpha.key_id)


async def test_key_rotation(fed: Federation) -> None:
    old = await fed.admit("acme")
    new_key = generate_private_key()
    async with fed.client(fed.governance) as gov:
        added = await gov.add_key("acme", new_key.public_key())
        assert added["key_id"] == key_id(new_key.public_key())
    new = Identity("acme", new_key)
    async with fed.client(new) as client:
        assert (await client.me())["key_id"] == new.key_id
    async with fed.client(fed.governance) as gov:
        await gov.set_key_status("acme", old.key_id, revoke=False, note="rotated")
        with pytest.raises(Conflict):
            await gov.set_key_status("acme", old.key_id, revoke=False)
        with pytest.raises(NotFound):
            await gov.set_key_status("governance", old.key_id, revoke=True)
    async with fed.client(old, retries=0) as client:
        with pytest.raises(KeyRetired):
            await client.me()


async def test_governance_cannot_retire_its_signing_key_or_suspend_itself(fed: Federation) -> None:
    async with fed.client(fed.governance) as gov:
        with pytest.raises(Conflict, match="cannot retire itself"):
            await gov.set_key_status("governance", fed.governance.key_id, revoke=False)
        with pytest.raises(Conflict, match="itself"):
            await gov.set_org_status("governance", suspend=True)


async def test_statement_subject_must_match_the_url(fed: Federation) -> None:
    await fed.admit("acme")
    await fed.admit("other")
    async with fed.client(fed.governance) as gov:
        statement = gov.sign({"type": "org.suspend", "subject": "other", "note": ""})
        with pytest.raises(StatementMalformed, match="subject"):
            await gov.send_statement("/v1/orgs/acme/suspend", statement)


async def test_suspend_and_reinstate_are_refused_when_already_so(fed: Federation) -> None:
    await fed.admit("acme")
    async with fed.client(fed.governance) as gov:
        with pytest.raises(Conflict):
            await gov.set_org_status("acme", suspend=False)
        first = await gov.set_org_status("acme", suspend=True)
        with pytest.raises(Conflict):
            await gov.set_org_status("acme", suspend=True)
        # Suspend, reinstate, suspend in one second: three statements, three effects.
        await gov.set_org_status("acme", suspend=False)
        third = await gov.set_org_status("acme", suspend=True)
        assert third["statement_id"] != first["statement_id"]
        assert third["leaf_index"] > first["leaf_index"]
        with pytest.raises(NotFound):
            await gov.set_org_status("nobody", suspend=True)
