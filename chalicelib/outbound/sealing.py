"""Webhook signing secrets at rest: sealed with Fernet (``cryptography``: AES-128-CBC with an
HMAC-SHA256 tag) under a key from the settings, so a copy of the database (a backup, a replica,
a leaked dump) does not let anyone sign webhooks in a customer's name.

WEBHOOK_SECRET_KEYS is a comma-separated list of Fernet keys: the first seals, every one opens.
In AWS it is an ``ssm:`` SecureString parameter, read like the other secret settings; on the
local stack, when it is empty, a fixed development key is used (the prod stage refuses that).

A stored value is ``fernet:<key id>:<token>``; the key id (8 hex digits of the key's SHA-256)
says which key sealed it, so the sweep finds what an older key sealed with plain SQL and a key
that cannot open what is stored is found when the container starts using webhooks, not when a
delivery goes out unsigned. A value without the prefix is a secret from before encryption
(stored in the clear): it is opened as it is and sealed on first read or by the sweep.

Rotating the key: put the new key first and keep the old one after it; the sweep reseals every
secret under the new key (`webhooks.reseal_secrets`); once no value names the old key id, drop it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken

PREFIX = "fernet:"
# Development only (documented, like LocalStack's test/test credentials): the key the local stack
# seals with when WEBHOOK_SECRET_KEYS is empty. Settings.check_stage refuses it in prod.
LOCAL_DEV_KEY = "Y3N2LW9wZW5lci1sb2NhbC1kZXYta2V5LW5vdC1zZWM="


class SealingKeyError(RuntimeError):
    """The configured keys cannot seal or open the stored secrets: a configuration fault, loud."""


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


class SecretBox:
    """Seals and opens webhook secrets with the configured Fernet keys (first one seals)."""

    def __init__(self, keys: Sequence[str]) -> None:
        keys = [k.strip() for k in keys if k.strip()]
        if not keys:
            raise SealingKeyError("WEBHOOK_SECRET_KEYS is empty: set at least one Fernet key (cryptography's "
                                  "Fernet.generate_key())")
        self._fernets: dict[str, Fernet] = {}
        for number, key in enumerate(keys, start=1):
            try:
                self._fernets[key_id(key)] = Fernet(key)
            except (ValueError, TypeError):
                raise SealingKeyError(f"WEBHOOK_SECRET_KEYS entry {number} is not a Fernet key "
                                      "(32 bytes, URL-safe base64)") from None
        self.current_id = key_id(keys[0])

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._fernets)

    def seal(self, secret: str) -> str:
        token = self._fernets[self.current_id].encrypt(secret.encode()).decode()
        return f"{PREFIX}{self.current_id}:{token}"

    def open(self, stored: str) -> str:
        """The secret a stored value holds. Raises SealingKeyError when no configured key sealed it
        or the value was tampered with: never a silent None (that would mean sending unsigned)."""
        if not is_sealed(stored):
            return stored  # from before encryption; resealed on read and by the sweep
        kid, _, token = stored[len(PREFIX):].partition(":")
        fernet = self._fernets.get(kid)
        if fernet is None:
            raise SealingKeyError(f"a webhook secret was sealed with key {kid}, which WEBHOOK_SECRET_KEYS does not "
                                  f"hold (it holds {', '.join(self.key_ids)}): put that key back after the new one")
        try:
            return fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SealingKeyError(f"a webhook secret sealed with key {kid} does not open: the stored value "
                                  "was changed, or the key is not the one that sealed it") from None

    def is_current(self, stored: str) -> bool:
        """Sealed with the first key (nothing to reseal)."""
        return stored.startswith(f"{PREFIX}{self.current_id}:")


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)
