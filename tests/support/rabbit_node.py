"""A throwaway RabbitMQ node for fault tests (broker restarts), never the main one on 5672.

``RabbitNode`` runs a second node of the locally installed RabbitMQ: its own node name
(``sipas_test_<random>@localhost``), its own free AMQP and distribution ports, and its own
temporary folder for the database (mnesia), logs, configuration, enabled-plugins file and Erlang
cookie (``HOME``). Nothing under ``/etc/rabbitmq`` is read: the environment file and the config
file are the node's own, so the main node's ``NODENAME`` and listener cannot leak in.

``stop()`` shuts the node down (SIGTERM: RabbitMQ's clean stop, so durable queues and persistent
messages are on disk; SIGKILL to its process group if it does not go); ``start()`` again boots it
on the same port with the same mnesia folder, so durable queues survive, as after a real broker
restart. ``close()`` stops it and removes the folder; use the node as a context manager (or the
``rabbit_node`` pytest fixture of the test that needs it) so that happens even when a test fails.
An ``atexit`` hook kills a node left running by an interpreter that exits without cleaning up.

The node is started by running the server script in the foreground as a child process of ours
(never ``-detached``), so we hold its PID and stop exactly that process and its children.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.support.stack_process import free_ports

SERVER_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/local/sbin/rabbitmq-server")
_LIVE: set["RabbitNode"] = set()


class RabbitNodeError(RuntimeError):
    """The node could not be started (or stopped)."""


def server_script() -> str:
    """The real server script. ``/usr/sbin/rabbitmq-server`` on Debian is a wrapper that switches
    to the ``rabbitmq`` user with ``su`` and redirects output; we call what it wraps."""
    override = os.environ.get("SIPAS_TEST_RABBITMQ_SERVER")
    for candidate in ((override,) if override else ()) + SERVER_CANDIDATES:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("rabbitmq-server")
    if found:
        return found
    raise RabbitNodeError("rabbitmq-server is not installed (set SIPAS_TEST_RABBITMQ_SERVER to its path)")


def amqp_ready(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when the port speaks AMQP: the broker answers the protocol header with a
    Connection.Start method frame (a bare TCP connect can succeed before the node is ready)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"AMQP\x00\x00\x09\x01")
            head = s.recv(7)
            return len(head) == 7 and head[0] == 1  # frame type 1: method
    except OSError:
        return False


class RabbitNode:
    def __init__(self, base_dir: Path | None = None, *, boot_timeout: float = 60.0) -> None:
        self._owns_dir = base_dir is None
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="sipas-rabbit-"))
        self.base.mkdir(parents=True, exist_ok=True)
        self.name = f"sipas_test_{uuid.uuid4().hex[:8]}@localhost"
        self.host = "127.0.0.1"
        self.port, self.dist_port = free_ports(2)
        self.boot_timeout = boot_timeout
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.starts = 0
        self._write_files()

    # -- files and environment -----------------------------------------------------------------

    def _write_files(self) -> None:
        for sub in ("mnesia", "log", "home"):
            (self.base / sub).mkdir(exist_ok=True)
        (self.base / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq/rabbitmq-env.conf
        (self.base / "enabled_plugins").write_text("[].\n")  # no management plugin, no extra ports
        (self.base / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    f"listeners.tcp.default = {self.host}:{self.port}",
                    "loopback_users.guest = true",  # guest, from localhost only (the default)
                    "log.console = true",
                    "log.console.level = warning",
                    "log.file.level = info",
                    "disk_free_limit.absolute = 10MB",
                    "",
                ]
            )
        )

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/"

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return {
            **keep,
            "HOME": str(self.base / "home"),  # the Erlang cookie is created here
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "node.pid"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    # -- life cycle ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "RabbitNode":
        """Boot the node (again, on the same port and mnesia folder) and wait until it speaks AMQP."""
        if self.running:
            return self
        if amqp_ready(self.host, self.port, timeout=0.3):
            raise RabbitNodeError(f"port {self.port} is already taken by another broker")
        self._log = open(self.base / f"console-{self.starts}.log", "wb")
        try:
            self.proc = subprocess.Popen(
                [server_script()],
                env=self.env(),
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: we stop it and its children only
            )
        except OSError as exc:
            self._log.close()
            raise RabbitNodeError(f"cannot run rabbitmq-server: {exc}") from exc
        self.starts += 1
        _LIVE.add(self)
        deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RabbitNodeError(f"RabbitMQ node {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if amqp_ready(self.host, self.port, timeout=0.5):
                return self
            time.sleep(0.2)
        self.kill()
        raise RabbitNodeError(f"RabbitMQ node {self.name} not ready after {self.boot_timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """Clean stop (RabbitMQ stops on SIGTERM); kill its process group if it hangs."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL the node's process group (the node and the helpers it spawned), by our PID."""
        proc = self.proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        # Wait until the port is free again, so a restart can bind it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and amqp_ready(self.host, self.port, timeout=0.2):
            time.sleep(0.1)
        _LIVE.discard(self)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self._owns_dir:
                shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for path in sorted(self.base.glob("console-*.log")) + sorted((self.base / "log").glob("*.log")):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out) or "(no log)"

    def __enter__(self) -> "RabbitNode":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __hash__(self) -> int:
        return id(self)


@atexit.register
def _kill_leftovers() -> None:
    for node in list(_LIVE):
        node.kill()
