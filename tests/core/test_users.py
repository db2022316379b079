"""Users, roles, password hashing, login rate limiting and API tokens against a real Redis."""
from __future__ import annotations

import pytest

from core import schema, users


def test_passwords_are_stored_as_scrypt_hashes_and_verified_in_constant_time(isolated_client):
    users.create_user(isolated_client, "alice", "correct horse", "operator")
    raw = isolated_client.hget(schema.USERS, "alice").decode()
    assert "correct horse" not in raw and '"kdf":"scrypt"' in raw
    record = users.get_user(isolated_client, "alice")
    assert users.verify_password(record, "correct horse")
    assert not users.verify_password(record, "correct horsE")
    assert not users.verify_password({"hash": "zz"}, "x")          # malformed record: no crash


def test_same_password_gets_a_different_salt_per_user(isolated_client):
    users.create_user(isolated_client, "a1", "samepassword", "viewer")
    users.create_user(isolated_client, "a2", "samepassword", "viewer")
    assert users.get_user(isolated_client, "a1")["hash"] != users.get_user(isolated_client, "a2")["hash"]


@pytest.mark.parametrize("name, password, role, message", [
    ("A", "longenough", "viewer", "username"), ("ok_name", "short", "viewer", "password"),
    ("ok_name", "longenough", "root", "role"), ("1abc", "longenough", "viewer", "username")])
def test_bad_user_fields_are_rejected_with_the_field_named(isolated_client, name, password, role, message):
    with pytest.raises(users.UserError, match=message):
        users.create_user(isolated_client, name, password, role)


def test_duplicate_and_missing_users_are_clear_errors(isolated_client):
    users.create_user(isolated_client, "bob", "password1", "viewer")
    with pytest.raises(users.UserError, match="already exists"):
        users.create_user(isolated_client, "bob", "password2", "admin")
    with pytest.raises(users.UserError, match="no user"):
        users.update_user(isolated_client, "nobody", role="admin")
    users.update_user(isolated_client, "bob", role="admin", password="password3")
    assert users.get_user(isolated_client, "bob")["role"] == "admin"
    assert users.authenticate(isolated_client, "bob", "password3", "1.2.3.4")
    users.delete_user(isolated_client, "bob")
    assert users.list_users(isolated_client) == []


def test_roles_are_ordered_viewer_operator_admin():
    assert users.has_role("admin", "operator") and users.has_role("operator", "operator")
    assert not users.has_role("viewer", "operator") and not users.has_role(None, "viewer")
    assert not users.has_role("root", "viewer")


def test_login_is_rate_limited_per_user_and_address_then_succeeds_after_the_window(isolated_client):
    users.create_user(isolated_client, "carol", "password1", "viewer")
    for _ in range(users.MAX_FAILURES):
        assert users.authenticate(isolated_client, "carol", "wrong-pass", "10.0.0.1") is None
    with pytest.raises(users.RateLimited) as err:
        users.authenticate(isolated_client, "carol", "password1", "10.0.0.1")  # even the right one
    assert 0 < err.value.retry_after_s <= users.FAILURE_WINDOW_S
    assert users.authenticate(isolated_client, "carol", "password1", "10.0.0.2")  # other address
    isolated_client.delete(schema.login_failures("carol|10.0.0.1"))              # window over
    assert users.authenticate(isolated_client, "carol", "password1", "10.0.0.1")["role"] == "viewer"


def test_first_start_creates_admin_once_with_given_or_generated_password(isolated_client):
    generated = users.ensure_admin(isolated_client, None)
    assert generated and users.authenticate(isolated_client, "admin", generated, "x")
    assert users.ensure_admin(isolated_client, "another-password") is None      # exists: untouched
    assert users.authenticate(isolated_client, "admin", generated, "x")


def test_api_tokens_map_to_their_user_with_the_current_role_and_are_stored_hashed(isolated_client):
    users.create_user(isolated_client, "bot", "password1", "operator")
    token = users.issue_api_token(isolated_client, "bot")
    assert token.encode() not in b"".join(isolated_client.hkeys(schema.API_TOKENS))
    assert users.user_for_token(isolated_client, token)["role"] == "operator"
    users.update_user(isolated_client, "bot", role="viewer")
    assert users.user_for_token(isolated_client, token)["role"] == "viewer"
    assert users.user_for_token(isolated_client, "ct_forged") is None
    assert users.user_for_token(isolated_client, "") is None
