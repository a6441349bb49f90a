"""remote.connect's choice of cipher, against an asyncssh server on loopback (the real path,
OpenSSH's sshd, is the lab's)."""

from __future__ import annotations

import asyncio
import os
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


def test_the_client_key_is_loaded_once_per_file_version(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path / "id"
    path.write_bytes(key.export_private_key())
    remote._loaded_keys.clear()
    first = remote._client_keys(str(path))
    assert remote._client_keys(str(path)) is first and len(remote._loaded_keys) == 1
    assert first[0].get_key_type() == "local"  # type: ignore[index]
    path.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    os.utime(path, ns=(1, 1))  # another version of the file: loaded again
    assert remote._client_keys(str(path)) is not first
    # what cannot be loaded here goes to asyncssh as a path, which reports it per connection
    assert remote._client_keys(str(tmp_path / "missing")) == [str(tmp_path / "missing")]
    enc = tmp_path / "enc"
    enc.write_bytes(key.export_private_key("pkcs8-pem", passphrase="secret"))
    assert remote._client_keys(str(enc)) == [str(enc)]
