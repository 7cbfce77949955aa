"""The operators' command (`python -m chalicelib.admin`) against the real PostgreSQL: the output
scripts rely on (the id or key alone on the last line), the effect of each command, and exit
status 2 with a message for bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid

import pytest

from chalicelib import accounts, admin
from chalicelib.accounts import Authenticator, Unauthorized
from tests.support.util import ROOT

KEY_SHAPE = re.compile(r"cso_[0-9a-f]{8}_[A-Za-z0-9_-]{43}")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = admin.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def last_line(text: str) -> str:
    return text.rstrip("\n").splitlines()[-1]


@pytest.fixture
def account_id(capsys, tag) -> str:
    code, out, _ = run(capsys, "create-account", f"{tag}-acme")
    assert code == 0
    return last_line(out)


def run_cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chalicelib.admin", *argv], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=timeout)


def test_create_account_prints_the_new_id_alone_on_the_last_line(capsys, pg, tag):
    code, out, err = run(capsys, "create-account", f"{tag} Acme Ltd")
    assert code == 0 and err == ""
    account_id = last_line(out)
    assert str(uuid.UUID(account_id)) == account_id
    assert accounts.get_account(pg, account_id)["name"] == f"{tag} Acme Ltd"


def test_create_key_prints_a_working_key_alone_on_the_last_line(capsys, pg, account_id):
    code, out, err = run(capsys, "create-key", account_id, "--role", "admin", "--name", "deploy bot")
    assert code == 0 and err == ""
    lines = out.rstrip("\n").splitlines()
    key = lines[-1]
    assert KEY_SHAPE.fullmatch(key)
    assert "only once" in lines[-2]
    caller = Authenticator(lambda: pg).authenticate(key)
    assert caller.account_id == account_id and caller.role == "admin"
    assert accounts.list_keys(pg, account_id)[0]["name"] == "deploy bot"

    code, out, _ = run(capsys, "create-key", account_id)
    assert code == 0 and Authenticator(lambda: pg).authenticate(last_line(out)).role == "member"


def test_list_keys_shows_prefixes_never_keys(capsys, account_id):
    keys = [last_line(run(capsys, "create-key", account_id, "--name", name)[1]) for name in ("one", "two")]
    code, out, _ = run(capsys, "list-keys", account_id)
    assert code == 0
    header, *rows = out.strip().splitlines()
    assert header.split()[:4] == ["PREFIX", "NAME", "ROLE", "STATUS"]
    assert len(rows) == 2
    for key, name, row in zip(keys, ("one", "two"), rows, strict=True):
        prefix, secret = key.split("_")[1], key.split("_", 2)[2]
        assert row.split()[:4] == [prefix, name, "member", "active"]
        assert prefix in out and secret not in out and key not in out

    code, out, _ = run(capsys, "list-keys", account_id, "--json")
    listed = json.loads(out)
    assert [k["prefix"] for k in listed] == [k.split("_")[1] for k in keys]
    assert all("secret_hash" not in k and k["account_id"] == account_id for k in listed)


def test_list_keys_without_an_account_lists_every_account(capsys, tag, account_id):
    _, out, _ = run(capsys, "create-account", f"{tag}-other")
    other = last_line(out)
    prefixes = {last_line(run(capsys, "create-key", a)[1]).split("_")[1] for a in (account_id, other)}
    code, out, _ = run(capsys, "list-keys", "--json")
    assert code == 0 and prefixes <= {k["prefix"] for k in json.loads(out)}


def test_revoke_key_refuses_the_key(capsys, pg, account_id):
    key = last_line(run(capsys, "create-key", account_id)[1])
    prefix = accounts.parse_key(key)
    code, out, err = run(capsys, "revoke-key", prefix)
    assert code == 0 and prefix in out and err == ""
    with pytest.raises(Unauthorized, match="revoked"):
        Authenticator(lambda: pg).authenticate(key)
    _, listing, _ = run(capsys, "list-keys", account_id)
    assert "revoked" in listing
    assert run(capsys, "revoke-key", f"cso_{prefix}")[0] == 0  # again, and by its tagged name: still fine


def test_set_limits_changes_the_limits_given(capsys, pg, account_id):
    code, out, err = run(capsys, "set-limits", account_id, "--rpm", "5", "--urls-per-day", "100", "--jobs", "2",
                         "--models", "gpt-4o,gpt-4o-mini")
    assert code == 0 and err == ""
    account = accounts.get_account(pg, account_id)
    assert (account["rpm"], account["urls_per_day"], account["max_jobs"]) == (5, 100, 2)
    assert account["models"] == ["gpt-4o", "gpt-4o-mini"]
    assert "rpm 5" in out

    assert run(capsys, "set-limits", account_id, "--rpm", "default", "--jobs", "0")[0] == 0
    account = accounts.get_account(pg, account_id)
    assert (account["rpm"], account["urls_per_day"], account["max_jobs"]) == (None, 100, 0)
    assert account["models"] == ["gpt-4o", "gpt-4o-mini"]


def test_disable_and_enable_account(capsys, pg, account_id):
    key = last_line(run(capsys, "create-key", account_id)[1])
    assert run(capsys, "disable-account", account_id)[0] == 0
    with pytest.raises(Unauthorized, match="disabled"):
        Authenticator(lambda: pg).authenticate(key)
    _, out, _ = run(capsys, "list-accounts")
    assert re.search(rf"^{account_id}\s+\S+\s+disabled\s", out, re.MULTILINE)
    assert run(capsys, "enable-account", account_id)[0] == 0
    assert Authenticator(lambda: pg).authenticate(key).account_id == account_id


def test_list_accounts_and_show_account(capsys, account_id, tag):
    run(capsys, "set-limits", account_id, "--urls-per-day", "250")
    run(capsys, "create-key", account_id)
    code, out, _ = run(capsys, "list-accounts", "--json")
    assert code == 0
    mine = next(a for a in json.loads(out) if a["id"] == account_id)
    assert (mine["name"], mine["urls_per_day"], mine["rpm"], mine["active_keys"]) == (f"{tag}-acme", 250, None, 1)

    code, out, _ = run(capsys, "list-accounts")
    row = next(line for line in out.splitlines() if line.startswith(account_id))
    assert row.split()[1:7] == [f"{tag}-acme", "active", "default", "250", "default", "default"]

    code, out, _ = run(capsys, "show-account", account_id, "--json")
    shown = json.loads(out)
    assert code == 0 and shown["account"]["id"] == account_id and shown["usage_today"]["urls"] == 0
    code, out, _ = run(capsys, "show-account", account_id)
    assert code == 0 and "urls_per_day 250" in out and "0 URLs accepted" in out


MISSING = "123e4567-e89b-12d3-a456-426614174000"


@pytest.mark.parametrize("argv, message", [
    ([], "required"),
    (["no-such-command"], "invalid choice"),
    (["create-account"], "required"),
    (["create-account", ""], "empty"),
    (["create-account", "bad\x07name"], "control"),
    (["create-key"], "required"),
    (["create-key", "not-a-uuid"], "UUID"),
    (["create-key", MISSING], "No account"),
    (["create-key", "{acc}", "--role", "owner"], "invalid choice"),
    (["revoke-key", "xyz"], "prefix"),
    (["revoke-key", "0000abcd"], "No key"),
    (["disable-account", MISSING], "No account"),
    (["enable-account", "12345"], "UUID"),
    (["set-limits", "{acc}"], "No limit"),
    (["set-limits", "{acc}", "--rpm", "-1"], "whole number"),
    (["set-limits", "{acc}", "--urls-per-day", "ten"], "whole number"),
    (["set-limits", "{acc}", "--jobs", "99999999999"], "whole number"),
    (["set-limits", "{acc}", "--models", "gpt-4o,,x"], "comma"),
    (["set-limits", "{acc}", "--models", "gpt 4o"], "model name"),
    (["set-limits", MISSING, "--rpm", "1"], "No account"),
    (["list-keys", "nope"], "UUID"),
    (["list-keys", MISSING], "No account"),
])
def test_bad_input_exits_2_with_a_message(capsys, pg, account_id, argv, message):
    before = accounts.get_account(pg, account_id)
    code, out, err = run(capsys, *[a.replace("{acc}", account_id) for a in argv])
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert accounts.get_account(pg, account_id) == before


def test_the_command_runs_as_a_module_in_a_subprocess(pg, tag):
    created = run_cli("create-account", f"{tag}-cli")
    assert created.returncode == 0, created.stderr
    account_id = last_line(created.stdout)
    assert accounts.get_account(pg, account_id)["name"] == f"{tag}-cli"

    keyed = run_cli("create-key", account_id, "--name", "from a script")
    assert keyed.returncode == 0, keyed.stderr
    key = last_line(keyed.stdout)
    assert KEY_SHAPE.fullmatch(key) and key not in keyed.stderr
    assert Authenticator(lambda: pg).authenticate(key).account_id == account_id

    bad = run_cli("set-limits", account_id, "--rpm", "-3")
    assert bad.returncode == 2 and "whole number" in bad.stderr

    revoked = run_cli("revoke-key", accounts.parse_key(key))
    assert revoked.returncode == 0 and key not in revoked.stdout + revoked.stderr
    with pytest.raises(Unauthorized):
        Authenticator(lambda: pg).authenticate(key)


def test_create_account_operator_through_the_real_command(pg, tag):
    """`create-account NAME --operator` (SPEC): the id alone on the last line, an operator account
    whose keys authenticate as such; without the flag, a customer account."""
    done = run_cli("create-account", f"{tag}-ops", "--operator")
    assert done.returncode == 0, done.stderr
    operator_id = last_line(done.stdout)
    assert str(uuid.UUID(operator_id)) == operator_id and accounts.get_account(pg, operator_id)["operator"] is True
    done = run_cli("create-key", operator_id)  # a member key of the operator account
    assert done.returncode == 0, done.stderr
    assert Authenticator(lambda: pg).authenticate(last_line(done.stdout)).is_operator

    customer_id = last_line(run_cli("create-account", f"{tag}-customer").stdout)
    assert accounts.get_account(pg, customer_id)["operator"] is False
    key = last_line(run_cli("create-key", customer_id, "--role", "admin").stdout)
    caller = Authenticator(lambda: pg).authenticate(key)
    assert caller.is_admin and not caller.is_operator

    listed = {a["id"]: a["operator"] for a in json.loads(run_cli("list-accounts", "--json").stdout)}
    assert (listed[operator_id], listed[customer_id]) == (True, False)
    row = next(line for line in run_cli("list-accounts").stdout.splitlines() if line.startswith(operator_id))
    assert row.split()[-3] == "yes"  # OPERATOR, before CREATED (a date and a time)
    done = run_cli("set-operator", customer_id)
    assert done.returncode == 0 and accounts.get_account(pg, customer_id)["operator"] is True
    assert run_cli("set-operator", customer_id, "--off").returncode == 0
    assert accounts.get_account(pg, customer_id)["operator"] is False


def test_an_unreachable_database_is_exit_1_not_a_traceback():
    env = {**os.environ, "DATABASE_URL": "postgresql://127.0.0.1:1/nothing"}
    result = subprocess.run([sys.executable, "-m", "chalicelib.admin", "list-accounts"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "cannot connect" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_admin_runs_the_same_command(tag):
    result = subprocess.run(["make", "--no-print-directory", "admin", f"ARGS=create-account {tag}-make"], cwd=ROOT,
                            env=dict(os.environ), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert str(uuid.UUID(last_line(result.stdout))) == last_line(result.stdout)
