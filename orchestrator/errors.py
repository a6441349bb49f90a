"""The one error tree of orch.

    OrchError                      every error orch raises on purpose
    +-- InputError                 bad inventory / playbook / topology (exit 2, nothing touched)
    |   +-- InventoryError
    |   +-- PlaybookError
    |   +-- TopologyError
    +-- RemoteError                something on a node went wrong
    |   +-- ConnectError           SSH could not connect / authenticate / verify host key
    |   +-- CommandError           a remote command exited non-zero
    |   +-- ChannelRefused         the node's sshd would not open a channel (e.g. to a socket)
    |   +-- RuntimeApiError        the container runtime's API answered with an error
    +-- DeployError                a deployment did not become (or stay) healthy
    |   +-- RankExited             a rank's container stopped during launch
    |   +-- ReadinessTimeout       the overall deadline passed
    +-- LockedError                another orch run holds the deployment lock

Errors of the libraries underneath (asyncssh, httpx, httpcore, pydantic) are translated in
exactly one place each (`remote.py`, `probe.py`, `runtime_api.py`, `config.py`), with
`raise ... from exc`.
"""

from __future__ import annotations

from dataclasses import dataclass


class OrchError(Exception):
    """Root of every error orch raises on purpose."""

    exit_code = 1


class InputError(OrchError):
    """The input (inventory, playbook, flags) is wrong; nothing was touched."""

    exit_code = 2


class InventoryError(InputError):
    pass


class PlaybookError(InputError):
    pass


class TopologyError(InputError):
    pass


class RemoteError(OrchError):
    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"{node}: {message}")
        self.node = node
        self.message = message


class ConnectError(RemoteError):
    transient = False  # True: the connection dropped or could not be made; a retry may cure it

    @classmethod
    def lost(cls, node: str, message: str) -> ConnectError:
        err = cls(node, message)
        err.transient = True
        return err


class CommandError(RemoteError):
    def __init__(self, node: str, argv: list[str], rc: int | None, output: str) -> None:
        tail = "\n".join(output.strip().splitlines()[-15:])
        msg = f"command exited {rc}: {' '.join(argv)[:200]}"
        if tail:
            msg += f"\n{tail}"
        super().__init__(node, msg)
        self.argv = argv
        self.rc = rc
        self.output = output


class ChannelRefused(RemoteError):
    """sshd refused to open a channel: forwarding disabled, socket missing or not permitted."""


class RuntimeApiError(RemoteError):
    pass


class DeployError(OrchError):
    pass


@dataclass
class RankFailure:
    node: str
    state: str
    log_tail: str


class RankExited(DeployError):
    def __init__(self, failures: list[RankFailure]) -> None:
        lines = []
        for f in failures:
            lines.append(f"rank on node {f.node} is {f.state}; last log lines:")
            lines.extend("    " + ln for ln in f.log_tail.rstrip().splitlines()[-20:])
        super().__init__("\n".join(lines))
        self.failures = failures


class ReadinessTimeout(DeployError):
    pass


class PreflightFailed(DeployError):
    """A preflight check failed on some node; nothing was launched."""


class LockedError(OrchError):
    exit_code = 4


class NodeErrors(OrchError):
    """Several nodes failed at the same step; one entry each (exit 2 if all are input errors)."""

    def __init__(self, errors: list[OrchError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors
        self.exit_code = 2 if all(isinstance(e, InputError) for e in errors) else 1
