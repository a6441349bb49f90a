"""remote.connect's choice of cipher, against an asyncssh server on loopback (the real path,
OpenSSH's sshd, is the lab's)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
import pytest

from orchestrator import remote
from orchestrator.remote import Target, connect


class _Server(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True  # the client's key is checked against authorized_client_keys


def _ciphers_seen(tmp_path: Path, config: str | None) -> str:
    hk = asyncssh.generate_private_key("ssh-ed25519")
    ck = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "client").write_bytes(ck.export_private_key())
    (tmp_path / "ak").write_bytes(ck.export_public_key())

    async def go() -> str:
        server = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[hk], server_factory=_Server,
                                       authorized_client_keys=str(tmp_path / "ak"))
        port = server.sockets[0].getsockname()[1]
        (tmp_path / "known_hosts").write_text(
            f"[127.0.0.1]:{port} {hk.export_public_key().decode().strip()}\n")
        t = Target("n0", "127.0.0.1", port, "root", str(tmp_path / "client"),
                   str(tmp_path / "known_hosts"), None, config)
        try:
            h = await connect(t, deadline_s=10)
            try:
                return str(h._conn.get_extra_info("send_cipher"))
            finally:
                h.close()
        finally:
            server.close()
            await server.wait_closed()

    remote._ciphers_configured.clear()
    return asyncio.run(go())


def test_aes_gcm_first_unless_an_ssh_config_names_the_ciphers(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/config
    assert _ciphers_seen(tmp_path, None) == "aes256-gcm@openssh.com"
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host *\n  Ciphers chacha20-poly1305@openssh.com\n")
    assert _ciphers_seen(tmp_path, str(cfg)) == "chacha20-poly1305@openssh.com"
    cfg.write_text("Host *\n  ServerAliveInterval 30\n")
    assert _ciphers_seen(tmp_path, str(cfg)) == "aes256-gcm@openssh.com"
