"""Accounts and keys for tests: a fresh account with a key, and a chalice test client that sends
it, as a real client would."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from chalicelib import accounts


@dataclass(frozen=True)
class TestAccount:
    id: str
    name: str
    key: str
    prefix: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def make_account(conn, name: str | None = None, role: str = "member", operator: bool = False,
                 **limits) -> TestAccount:
    """A new account (an operator account if asked; limits as set-limits takes them) with one key
    of `role`."""
    name = name or f"test-{uuid.uuid4().hex[:8]}"
    account = accounts.create_account(conn, name, operator=operator)
    account_id = str(account["id"])
    if limits:
        accounts.set_limits(conn, account_id, **limits)
    key, row = accounts.create_key(conn, account_id, role=role, name="tests")
    return TestAccount(account_id, name, key, row["prefix"])


class AuthedHttp:
    """`chalice.test.Client.http` sending one account's key (unless the test sends its own)."""

    def __init__(self, http, key: str | None) -> None:
        self._http = http
        self.key = key

    def request(self, method: str, path: str, headers: dict | None = None, body: bytes | str = b""):
        sent = dict(headers or {})
        if self.key and not any(h.lower() in ("authorization", "x-api-key") for h in sent):
            sent["Authorization"] = f"Bearer {self.key}"
        return self._http.request(method, path, headers=sent, body=body)

    def get(self, path: str, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs):
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs):
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs):
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs):
        return self.request("DELETE", path, **kwargs)


class AuthedClient:
    """A chalice test client as one account: `.http` sends its key, `.anonymous` sends none."""

    def __init__(self, client, account: TestAccount | None) -> None:
        self._client = client
        self.account = account
        self.http = AuthedHttp(client.http, account.key if account else None)
        self.anonymous = AuthedHttp(client.http, None)
        self.events = client.events
        self.lambda_ = client.lambda_

    def as_account(self, account: TestAccount) -> AuthedClient:
        return AuthedClient(self._client, account)


def service_account(conn, name: str = "tests-services") -> str:
    """The id of an account for tests that call the services directly (no daily quota)."""
    return str(accounts.ensure_account(conn, name, urls_per_day=0, max_jobs=0)["id"])
