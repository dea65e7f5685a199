"""The admin token file of ``auth_strategy = token``: created private, never trusted blindly.

A planted symlink, a file other users may read, or one another user owns is refused with a
message naming the fix; the CLI finds the token wherever ``admin_token_file`` puts it.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from midonet_membership.api.auth import AdminTokenError, ensure_admin_token
from tests.e2e.test_cli import ok, run
from tests.fixtures.servers import free_port

BIN = Path(sys.executable).parent
NOBODY = 65534


def test_a_new_token_file_is_0600_and_reused(tmp_path):
    path = tmp_path / "state" / "admin-token"
    old_umask = os.umask(0)  # a careless umask must not widen the mode
    try:
        token = ensure_admin_token(str(path))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == token + "\n" and len(token) == 64
    assert ensure_admin_token(str(path)) == token


@pytest.mark.parametrize("target_exists", [True, False])
def test_a_symlink_is_refused_and_not_followed(tmp_path, target_exists):
    target = tmp_path / "elsewhere"
    if target_exists:
        target.write_text("attacker-chosen\n")
        target.chmod(0o600)
    link = tmp_path / "admin-token"
    link.symlink_to(target)
    with pytest.raises(AdminTokenError, match="symbolic link"):
        ensure_admin_token(str(link))
    assert target.exists() == target_exists  # not created through the link
    if target_exists:
        assert target.read_text() == "attacker-chosen\n"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_a_file_others_may_read_or_write_is_refused(tmp_path, mode):
    path = tmp_path / "admin-token"
    path.write_text("a" * 64 + "\n")
    path.chmod(mode)
    with pytest.raises(AdminTokenError, match=f"mode {mode:04o}.*chmod 600"):
        ensure_admin_token(str(path))
    assert path.read_text() == "a" * 64 + "\n"


def test_a_file_another_user_owns_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root (CI runs as root)")
    path = tmp_path / "admin-token"
    path.write_text("b" * 64 + "\n")
    path.chmod(0o600)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(AdminTokenError, match=f"owned by uid {NOBODY}"):
        ensure_admin_token(str(path))


def test_an_empty_private_file_gets_a_token(tmp_path):
    path = tmp_path / "admin-token"  # what a crash between create and write leaves
    path.touch(mode=0o600)
    token = ensure_admin_token(str(path))
    assert path.read_text() == token + "\n" and len(token) == 64


def test_the_server_refuses_to_start_on_a_readable_token(tmp_path):
    token = tmp_path / "admin-token"
    token.write_text("c" * 64 + "\n")
    token.chmod(0o644)
    conf = tmp_path / "neutron.conf"
    conf.write_text(f"[database]\nconnection = sqlite:///{tmp_path}/db.sqlite\n")
    result = subprocess.run(
        [str(BIN / "midonet-membership"), "all-in-one", "--config-file", str(conf),
         "--state-dir", str(tmp_path), "--bind", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert f"admin token file {token} has mode 0644" in result.stderr


def test_the_cli_finds_the_token_at_the_configured_path(start_server, make_database, tmp_path):
    secrets_dir = tmp_path / "secrets"
    token_file = secrets_dir / "api-admin-token"
    server = start_server(make_database("sqlite"),
                          conf={"DEFAULT": {"admin_token_file": str(token_file)}})
    assert not (server.state_dir / "admin-token").exists()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    host = str(uuid.uuid4())
    ok(run("neutron", "--config-file", str(server.config_file), "--state-dir",
           str(server.state_dir), "agent-membership-create", "-a", host,
           "--ip-address", "198.51.100.40"))
    by_option = ok(run("neutron", "--state-dir", str(server.state_dir), "--admin-token-file",
                       str(token_file), "agent-membership-list", "-f", "value"))
    assert by_option.stdout == f"{host} 198.51.100.40\n"
    by_env = ok(run("neutron", "--state-dir", str(server.state_dir), "agent-membership-show",
                    host, "-f", "value", "-c", "ip_address",
                    env={"MIDONET_ADMIN_TOKEN_FILE": str(token_file)}))
    assert by_env.stdout == "198.51.100.40\n"
    # Without the path the CLI looks in the state dir, and says where it looked.
    missing = run("neutron", "--state-dir", str(server.state_dir), "agent-membership-list")
    assert missing.returncode != 0
    assert f"{server.state_dir}/admin-token does not exist" in missing.stderr
