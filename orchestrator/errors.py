"""The one error tree of orch: every exception orch raises derives from `OrchError`.

    OrchError                      every error orch raises on purpose
    +-- InputError                 bad inventory / playbook / topology (exit 2, nothing touched)
    |   +-- InventoryError
    |   +-- PlaybookError
    |   +-- TopologyError
    +-- ParseError                 a tool's output (npu-smi, hccn_tool, nvidia-smi) is unreadable
    +-- RemoteError                something on a node went wrong
    |   +-- ConnectError           SSH could not connect / authenticate / verify host key
    |   +-- CommandError           a remote command exited non-zero
    |   +-- ChannelRefused         the node's sshd would not open a channel (e.g. to a socket)
    |   +-- RuntimeApiError        the container runtime's API answered with an error
    |   +-- RuntimeApiUnavailable  the runtime's API socket cannot be reached: use the CLI
    +-- ProbeError                 an HTTP probe of a served API got no (good) answer
    +-- DeployError                a deployment did not become (or stay) healthy
    |   +-- RankExited             a rank's container stopped during launch
    |   +-- ReadinessTimeout       the overall deadline passed
    |   +-- PreflightFailed        a preflight check failed; nothing was launched
    |   +-- RolloutHalted          a new replica failed: the old ones still serve
    +-- NotReady                   a polled condition does not hold yet (retry.poll retries it)
    +-- StageError                 staging weights or an image failed
    +-- LockedError                another orch run holds the deployment lock
    +-- NodeErrors                 several nodes failed at the same step
    +-- LabError                   (orchestrator.lab) the local lab could not be built/used

Errors of the libraries underneath are translated in exactly one place each, with
`raise ... from exc`: asyncssh in `remote.py` (SSH), httpx in `probe.py` (HTTP), h11 in
`runtime_api.py` (the runtime's API over SSH), PyYAML and pydantic in `config.py` (input).
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


class ParseError(OrchError):
    """A tool (npu-smi, hccn_tool, nvidia-smi, ...) printed something no known version of it
    prints (the parsers of orchestrator/hw)."""

    def __init__(self, tool: str, reason: str, excerpt: str = "") -> None:
        self.tool = tool
        self.reason = reason
        self.excerpt = excerpt[:300]
        super().__init__(f"{tool}: {reason}" + (f" (got: {self.excerpt!r})" if excerpt else ""))


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


class RuntimeApiUnavailable(RemoteError):
    """The runtime's socket cannot be reached over this SSH connection: use the CLI."""


class ProbeError(OrchError):
    """An API probe got no (good) answer; `reason` is one line for the operator."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
    """A preflight check failed on some node; nothing was launched.  `report` is the
    preflight's Report (rendered by the CLI)."""

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report


class RolloutHalted(DeployError):
    """A replica being (re)deployed failed; the replicas not yet touched still serve."""


class NotReady(OrchError):
    """A polled condition does not hold yet; `retry.poll` retries only this."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StageError(OrchError):
    pass


class LockedError(OrchError):
    exit_code = 4


class NodeErrors(OrchError):
    """Several nodes failed at the same step; one entry each (exit 2 if all are input errors)."""

    def __init__(self, errors: list[OrchError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors
        self.exit_code = 2 if all(isinstance(e, InputError) for e in errors) else 1
