"""Key format, parsing, hashing and limit defaults: the parts of accounts.py that need no database."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from chalicelib import accounts
from chalicelib.accounts import Caller, Limits, Unauthorized, effective_limits, generate_key, hash_key, parse_key
from chalicelib.errors import BadRequest

KEY_SHAPE = re.compile(r"cso_[0-9a-f]{8}_[A-Za-z0-9_-]{43}")
DEFAULTS = {"default_rpm": 600, "default_urls_per_day": 50_000, "default_max_jobs": 3, "default_model": "gpt-4o-mini"}


def test_generated_keys_have_the_documented_shape_and_their_prefix():
    for _ in range(200):
        key, prefix = generate_key()
        assert KEY_SHAPE.fullmatch(key), key
        assert key.startswith(f"cso_{prefix}_") and parse_key(key) == prefix


def test_the_secret_carries_at_least_32_random_bytes():
    keys = [generate_key()[0] for _ in range(200)]
    secrets_ = [key.split("_", 2)[2] for key in keys]
    assert all(len(base64.urlsafe_b64decode(s + "=")) >= 32 for s in secrets_)
    assert len(set(secrets_)) == len(secrets_)
    assert len({key.split("_")[1] for key in keys}) > 190  # prefixes are random too (8 hex: collisions rare)


@pytest.mark.parametrize("text", [
    None, "", 42, b"cso_0123abcd_" + b"A" * 43,
    "cso_0123abcd",  # prefix alone
    "cso_0123ABCD_" + "A" * 43,  # prefix must be lowercase hex
    "cso_0123abcg_" + "A" * 43,  # not hex
    "sk__0123abcd_" + "A" * 43,  # another product's tag
    "CSO_0123abcd_" + "A" * 43,
    "cso_0123abcd_" + "A" * 42,  # too short
    "cso_0123abcd_" + "A" * 44,  # too long
    "cso_0123abcd_" + "A" * 10_000,
    "cso_0123abcd_" + "A" * 42 + "\x00",
    "cso_0123abcd_" + "A" * 42 + " ",
    " cso_0123abcd_" + "A" * 42,
    "cso_0123abcd_" + "A" * 42 + "\n",
    "cso_0123abcd_" + "A" * 42 + "\t",
    "cso_0123abcd_" + "A" * 42 + "é",
    "cso_0123abcd_" + "A" * 42 + "=",  # padding is not part of the alphabet
    "cso_0123abcd_" + "A" * 42 + "+",  # standard base64, not url-safe
    "cso_0123abcd-" + "A" * 43,  # wrong separator
    "cso_0123\u0430bcd_" + "A" * 43,  # Cyrillic a
])
def test_parse_key_rejects_anything_but_a_well_formed_key(text):
    assert parse_key(text) is None


def test_parse_key_accepts_every_url_safe_secret_character():
    key = "cso_0123abcd_" + "Az09-_" * 7 + "x"
    assert parse_key(key) == "0123abcd"
    assert parse_key(key + "\n") is None  # fullmatch: no trailing newline sneaks past `$`


def test_hash_is_sha256_of_the_whole_key_and_differs_per_key():
    key_a, key_b = generate_key()[0], generate_key()[0]
    assert hash_key(key_a) == hashlib.sha256(key_a.encode()).digest()
    assert hash_key(key_a) != hash_key(key_b)
    assert len(hash_key(key_a)) == 32
    assert accounts.key_matches(key_a, hash_key(key_a))
    assert not accounts.key_matches(key_b, hash_key(key_a))


def test_effective_limits_fill_the_defaults_for_unset_limits():
    caller = Caller(key_id="k", key_prefix="0123abcd", role="member", account_id="a", account_name="acme")
    assert effective_limits(caller, **DEFAULTS) == Limits(rpm=600, urls_per_day=50_000, max_jobs=3,
                                                          models=("gpt-4o-mini",))


def test_effective_limits_keep_the_accounts_own_even_zero():
    row = {"rpm": 0, "urls_per_day": 10, "max_jobs": 0, "models": ["gpt-4o", "gpt-4o-mini"]}
    assert effective_limits(row, **DEFAULTS) == Limits(rpm=0, urls_per_day=10, max_jobs=0,
                                                       models=("gpt-4o", "gpt-4o-mini"))
    partial = {"rpm": None, "urls_per_day": 5, "max_jobs": None, "models": None}
    assert effective_limits(partial, **DEFAULTS) == Limits(rpm=600, urls_per_day=5, max_jobs=3,
                                                           models=("gpt-4o-mini",))


def test_caller_is_admin_only_with_the_admin_role():
    member = Caller(key_id="k", key_prefix="0123abcd", role="member", account_id="a", account_name="acme")
    admin = Caller(key_id="k", key_prefix="0123abcd", role="admin", account_id="a", account_name="acme")
    assert admin.is_admin and not member.is_admin


def test_only_a_key_of_an_operator_account_is_an_operator_whatever_its_role():
    def caller(role: str, **account) -> Caller:
        return Caller(key_id="k", key_prefix="0123abcd", role=role, account_id="a", account_name="acme", **account)

    assert not caller("admin").is_operator and not caller("member").is_operator  # customers by default
    assert caller("member", operator=True).is_operator and caller("admin", operator=True).is_operator


def _no_database():
    raise AssertionError("a key refused by its shape must not reach the database")


@pytest.mark.parametrize("raw", [None, "", "Bearer cso_x", "cso_0123abcd_short"])
def test_missing_and_malformed_keys_are_refused_without_a_query(raw):
    auth = accounts.Authenticator(_no_database)
    with pytest.raises(Unauthorized) as info:
        auth.authenticate(raw)
    assert info.value.status == 401 and info.value.code == "unauthorized"
    assert info.value.headers == {"WWW-Authenticate": "Bearer"}


def test_revocation_delay_cannot_be_configured_past_60_seconds():
    with pytest.raises(ValueError):
        accounts.Authenticator(_no_database, ttl_s=61)


@pytest.mark.parametrize("value", ["", "  ", "a" * 201, "bad\x00name", "line\nbreak", "tab\tbed", 7])
def test_names_with_control_characters_or_out_of_bounds_are_rejected(value):
    with pytest.raises(BadRequest):
        accounts.create_account(_no_database, value)


@pytest.mark.parametrize("models", [[], "gpt-4o", ["gpt 4o"], ["a,b"], ["x" * 101], ["gpt-4o\x00"], ["é"], [3]])
def test_bad_model_lists_are_rejected_before_any_query(models):
    with pytest.raises(BadRequest):
        accounts.set_limits(_no_database, "123e4567-e89b-12d3-a456-426614174000", models=models)


@pytest.mark.parametrize("value", [-1, 2**31, True, 1.5, "5"])
def test_bad_limits_are_rejected_before_any_query(value):
    with pytest.raises(BadRequest):
        accounts.set_limits(_no_database, "123e4567-e89b-12d3-a456-426614174000", rpm=value)


@pytest.mark.parametrize("value", [
    "", "123", "123e4567-e89b-12d3-a456-42661417400g", "{123e4567-e89b-12d3-a456-426614174000}",
    "123e4567e89b12d3a456426614174000", "123e4567-e89b-12d3-a456-426614174000\n", None,
])
def test_account_ids_must_be_uuids(value):
    with pytest.raises(BadRequest):
        accounts.valid_uuid(value)
    assert accounts.valid_uuid("123E4567-E89B-12D3-A456-426614174000") == "123e4567-e89b-12d3-a456-426614174000"


def test_prefixes_are_accepted_bare_tagged_or_as_the_whole_key():
    key, prefix = generate_key()
    assert accounts.normalize_prefix(prefix) == prefix
    assert accounts.normalize_prefix(f"cso_{prefix}") == prefix
    assert accounts.normalize_prefix(key) == prefix
    for bad in ("", "0123abc", "0123abcde", "cso_0123ABCD", "cso_0123abcd_"):
        with pytest.raises(BadRequest):
            accounts.normalize_prefix(bad)
