"""API keys: who may hand in files, read results and triage over HTTP.

A key is a random 32-byte token shown once when it is made; the warehouse keeps only its
SHA-256, its name and its scopes, so a copy of the warehouse lets nobody in. Production keys
may also come from the secrets store instead: HARMONIZER_API_KEYS, a JSON object of names
to {"sha256": ..., "scopes": [...]}, which `harmonizer with-secrets` sets from AWS Secrets
Manager. A key's name is who it acts as: every write over HTTP is recorded under it.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from harmonizer_dagster.core.warehouse import Warehouse

SCOPES = ("upload", "read", "triage")
# What a key's token starts with: a leaked one is recognisable in a log or a paste.
TOKEN_PREFIX = "hzk_"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ApiKey:
    name: str
    scopes: tuple[str, ...]
    created_at: Any = None
    revoked_at: Any = None
    origin: str = "warehouse"  # or "secrets store"

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


def key_digest(token: str) -> str:
    """The SHA-256 (hex) a key is kept and looked up as."""
    return hashlib.sha256(token.encode()).hexdigest()


def checked_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(scopes))
    unknown = [scope for scope in chosen if scope not in SCOPES]
    if unknown or not chosen:
        raise ValueError(f"a key needs one or more scopes of {', '.join(SCOPES)} (got {', '.join(unknown) or 'none'})")
    return chosen


def create_key(store: Warehouse, name: str, scopes: Iterable[str]) -> str:
    """Makes a key and returns its token: the only time it is ever shown. A name is used once,
    even after its key is revoked, so the records a key's writes left stay unambiguous."""
    if not NAME.fullmatch(name):
        raise ValueError("a key's name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    granted = checked_scopes(scopes)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    # The primary key on names settles two keys of one name made at the same moment.
    with store.transaction():
        if store.query("SELECT 1 FROM {schema}.api_keys WHERE name = %s", (name,)):
            raise ValueError(f"a key named {name} exists already (revoked keys keep their names): choose another")
        store.query(
            "INSERT INTO {schema}.api_keys (name, key_sha256, scopes) VALUES (%s, %s, %s)",
            (name, key_digest(token), " ".join(granted)),
        )
    return token


def revoke_key(store: Warehouse, name: str) -> bool:
    """Revokes the named key at once; False when there is no such active key."""
    return bool(
        store.query(
            "UPDATE {schema}.api_keys SET revoked_at = now() WHERE name = %s AND revoked_at IS NULL RETURNING name",
            (name,),
        )
    )


def list_keys(store: Warehouse) -> list[ApiKey]:
    """Every key the warehouse holds, revoked ones too, oldest first; never their tokens."""
    rows = store.query("SELECT name, scopes, created_at, revoked_at FROM {schema}.api_keys ORDER BY created_at, name")
    return [ApiKey(name, tuple(scopes.split()), created, revoked) for name, scopes, created, revoked in rows]


def secret_keys(value: str) -> dict[str, ApiKey]:
    """The keys HARMONIZER_API_KEYS holds, by digest; ValueError naming no digest when malformed."""
    if not value.strip():
        return {}
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, Mapping):
        raise ValueError('HARMONIZER_API_KEYS is not a JSON object of names to {"sha256": ..., "scopes": [...]}')
    keys = {}
    for name, entry in data.items():
        if not isinstance(entry, Mapping) or not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256", ""))):
            raise ValueError(f"HARMONIZER_API_KEYS: key {name} needs a sha256 of 64 hex digits")
        keys[entry["sha256"]] = ApiKey(str(name), checked_scopes(entry.get("scopes", ())), origin="secrets store")
    return keys


def authenticate(store: Warehouse, token: str, configured: Mapping[str, ApiKey] | None = None) -> ApiKey | None:
    """The active key this token is, from the secrets store's keys or the warehouse's; None
    for an unknown or revoked one."""
    digest = key_digest(token)
    if configured and digest in configured:
        return configured[digest]
    rows = store.query(
        "SELECT name, scopes, created_at FROM {schema}.api_keys WHERE key_sha256 = %s AND revoked_at IS NULL",
        (digest,),
    )
    return ApiKey(rows[0][0], tuple(rows[0][1].split()), rows[0][2]) if rows else None
