"""Console users, roles, password hashing, login rate limiting and per-user API tokens.

Passwords are hashed with scrypt (stdlib hashlib; N=2**14, r=8, p=1, 32-byte key, 16-byte
random salt), compared in constant time. Roles are ordered: viewer < operator < admin; a
check asks for the least role an action needs. Users live in Redis (`schema.USERS`, one JSON
record per name); API tokens are stored only as SHA-256 digests, so a Redis dump leaks none.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

import redis

from core import schema

ROLES = ("viewer", "operator", "admin")
_RANK = {role: i for i, role in enumerate(ROLES)}
USERNAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{1,31}$")
MIN_PASSWORD_LEN = 8
MAX_PASSWORD_LEN = 256
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
# login rate limit: failures per (user, address) within the window, then refused until it ends
MAX_FAILURES = 5
FAILURE_WINDOW_S = 300


class UserError(ValueError):
    """A user-management request that cannot be honoured (message says why)."""


class RateLimited(Exception):
    """Too many failed logins for this user from this address; retry after `retry_after_s`."""

    def __init__(self, retry_after_s: int):
        super().__init__(f"too many failed logins; try again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


def has_role(role: str | None, needed: str) -> bool:
    """True when `role` is at least `needed` (viewer < operator < admin)."""
    return role in _RANK and _RANK[role] >= _RANK[needed]


def _hash(password: str, salt: bytes, params: dict) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=params["n"], r=params["r"],
                          p=params["p"], dklen=params["dklen"], maxmem=64 * 1024 * 1024)


def hash_password(password: str) -> dict:
    salt = secrets.token_bytes(16)
    return {"salt": salt.hex(), "hash": _hash(password, salt, SCRYPT).hex(), "kdf": "scrypt", **SCRYPT}


def verify_password(record: dict, password: str) -> bool:
    try:
        params = {k: int(record[k]) for k in ("n", "r", "p", "dklen")}
        expected = bytes.fromhex(record["hash"])
        actual = _hash(password, bytes.fromhex(record["salt"]), params)
    except (KeyError, ValueError, TypeError):
        return False
    return hmac.compare_digest(expected, actual)


def _validate(username: str, password: str | None, role: str | None) -> None:
    if not isinstance(username, str) or not USERNAME_RE.match(username):
        raise UserError("username: 2-32 characters, lower-case letters, digits, '_', '.', '-', "
                        "starting with a letter")
    if password is not None and not (MIN_PASSWORD_LEN <= len(password) <= MAX_PASSWORD_LEN):
        raise UserError(f"password: {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters")
    if role is not None and role not in ROLES:
        raise UserError(f"role: one of {', '.join(ROLES)}")


def get_user(client: redis.Redis, username: str) -> dict | None:
    """The stored record (with 'role'), or None."""
    raw = client.hget(schema.USERS, username)
    return None if raw is None else {"username": username, **schema.loads(raw)}


def list_users(client: redis.Redis) -> list[dict]:
    """Every user without secrets: username, role, created."""
    users = schema.read_json_hash(client, schema.USERS)
    return [{"username": name, "role": rec.get("role"), "created": rec.get("created")}
            for name, rec in sorted(users.items())]


def create_user(client: redis.Redis, username: str, password: str, role: str) -> None:
    _validate(username, password, role)
    record = {"role": role, "created": time.time(), **hash_password(password)}
    if not client.hsetnx(schema.USERS, username, schema.dumps(record)):
        raise UserError(f"user {username!r} already exists")


def update_user(client: redis.Redis, username: str, password: str | None = None,
                role: str | None = None) -> None:
    _validate(username, password, role)
    record = get_user(client, username)
    if record is None:
        raise UserError(f"no user {username!r}")
    record.pop("username")
    if role is not None:
        record["role"] = role
    if password is not None:
        record.update(hash_password(password))
    client.hset(schema.USERS, username, schema.dumps(record))


def delete_user(client: redis.Redis, username: str) -> None:
    if not client.hdel(schema.USERS, username):
        raise UserError(f"no user {username!r}")


def ensure_admin(client: redis.Redis, password: str | None) -> str | None:
    """Create `admin` on first start. Returns the generated password when none was given
    (the caller prints it once), else None. Does nothing when admin exists."""
    if client.hexists(schema.USERS, "admin"):
        return None
    generated = None if password else secrets.token_urlsafe(12)
    try:
        create_user(client, "admin", password or generated, "admin")
    except UserError as exc:
        if "already exists" in str(exc):  # another process won the race
            return None
        raise
    return generated


def authenticate(client: redis.Redis, username: str, password: str, address: str) -> dict | None:
    """The user when the password matches; None otherwise. Raises RateLimited after
    MAX_FAILURES failures for this user from this address within FAILURE_WINDOW_S."""
    key = schema.login_failures(f"{username[:64]}|{address}")
    failures = int(client.get(key) or 0)
    if failures >= MAX_FAILURES:
        raise RateLimited(max(1, client.ttl(key)))
    user = get_user(client, username) if isinstance(username, str) else None
    if user is not None and isinstance(password, str) and verify_password(user, password):
        client.delete(key)
        return user
    pipe = client.pipeline(transaction=True)
    pipe.incr(key)
    pipe.expire(key, FAILURE_WINDOW_S)
    pipe.execute()
    return None


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_api_token(client: redis.Redis, username: str) -> str:
    """A new API token for `username` (shown once; stored as a digest)."""
    if get_user(client, username) is None:
        raise UserError(f"no user {username!r}")
    token = "ct_" + secrets.token_urlsafe(32)
    client.hset(schema.API_TOKENS, _token_digest(token), username)
    return token


def user_for_token(client: redis.Redis, token: str) -> dict | None:
    """The user an API token belongs to (with its current role), or None."""
    if not isinstance(token, str) or not token:
        return None
    username = client.hget(schema.API_TOKENS, _token_digest(token))
    return None if username is None else get_user(client, username.decode())
