"""Run the real stack as operating-system processes, for black-box tests.

``embedded``: ``python -m services run`` (one process, five servers). ``separate``: five
``python -m services serve NAME`` processes, as production runs them (services tier only: they
need PostgreSQL and RabbitMQ to talk to each other). Ports are picked free, data and schemas are
the test's own, and everything is stopped and dropped afterwards.

``each``: like ``separate``, but this object starts the five ``serve`` processes itself (after
``migrate``) instead of through ``python -m services stack``, so it holds each one's PID: fault
tests ``kill(name)`` one service with SIGKILL (no shutdown code runs, as when a machine or the
OOM killer takes it) and ``restart(name)`` it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.settings import SERVICES

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports. Every socket stays bound until all are chosen: closing each
    before asking for the next let the kernel hand the same port out twice, and two services of
    a test stack were given one port (the second could not bind, and the first answered for
    both)."""
    with contextlib.ExitStack() as sockets:
        bound = [sockets.enter_context(socket.socket()) for _ in range(n)]
        for s in bound:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in bound]


@dataclass
class StackProcess:
    env: dict[str, str]
    urls: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)
    log_dir: Path | None = None
    by_name: dict[str, subprocess.Popen] = field(default_factory=dict)  # mode "each" only

    def cli(self, *args: str, timeout: float = 120) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "services", *args], env=self.env, cwd=ROOT, capture_output=True, text=True,
            timeout=timeout,
        )
        if out.returncode != 0:
            raise RuntimeError(f"services {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def issue_key(self, role: str, province: str | None = None) -> str:
        args = ["keys", "issue", "--role", role, "--label", f"test {role}"]
        if province:
            args += ["--province", province]
        return self.cli(*args).strip().splitlines()[-1]

    def start(self, mode: str) -> None:
        assert self.log_dir is not None
        if mode == "embedded":
            self.cli("migrate")
            commands = [("all", ["run"])]
        elif mode == "each":
            self.cli("migrate")
            for name in self.urls:
                self.spawn(name)
            # Five interpreters importing the stack at once take minutes on a saturated machine.
            self.wait_ready(timeout=240)
            return
        else:
            # `python -m services stack` (what `make stack` runs): migrate, then five processes.
            commands = [("stack", ["stack"])]
        for name, args in commands:
            log = open(self.log_dir / f"{name}.log", "wb")
            self.procs.append(
                subprocess.Popen([sys.executable, "-m", "services", *args], env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            )
        self.wait_ready(timeout=90)

    def spawn(self, name: str) -> subprocess.Popen:
        """Start ``python -m services serve NAME``; its log is appended to across restarts."""
        assert self.log_dir is not None
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services", "serve", name], env=self.env, cwd=ROOT, stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        self.by_name[name] = proc
        return proc

    def kill(self, name: str) -> int:
        """SIGKILL one service process (mode ``each``), by its PID; return its exit code."""
        proc = self.by_name.pop(name)
        proc.kill()
        code = proc.wait(timeout=30)
        self.procs.remove(proc)
        return code

    def restart(self, name: str, timeout: float = 180) -> None:
        """Start a killed service again and wait until it answers ``/readyz``."""
        assert name not in self.by_name, f"{name} is still running"
        self.spawn(name)
        self.wait_ready(timeout=timeout, names=[name])

    def wait_ready(self, timeout: float = 60, names: list[str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        pending = {n: u for n, u in self.urls.items() if names is None or n in names}
        while pending:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a service process exited early ({p.returncode}):\n{self.logs()}")
            for name, url in list(pending.items()):
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        # Ready, and the right service on that port (not another one that got it).
                        answered = httpx.get(f"{url}/healthz", timeout=2).json().get("service")
                        if answered != name:
                            raise RuntimeError(f"{url} answers as {answered}, not {name}:\n{self.logs()}")
                        del pending[name]
                except httpx.HTTPError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready in {timeout}s: {sorted(pending)}\n{self.logs()}")
            time.sleep(0.2)

    def logs(self, tail: int | None = 4000) -> str:
        if self.log_dir is None:
            return ""
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-tail if tail else 0:]}" for p in sorted(self.log_dir.glob("*.log"))
        )

    def stop(self, timeout: float = 45) -> list[int]:
        """SIGINT, then SIGKILL after ``timeout``: longer than ``services stack`` takes to stop its
        five services (30 s, then it kills them), so it is not killed itself with children left."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        self.procs.clear()
        return codes


def stack_env(tmp: Path, *, database_url: str | None, bus_url: str | None) -> tuple[dict[str, str], dict[str, str], str]:
    """Environment for a stack of our own: free ports, own data dir / schemas / exchange."""
    uid = uuid.uuid4().hex[:10]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIPAS_")}
    env.update(
        SIPAS_ENVIRONMENT="test",
        SIPAS_DATA_DIR=str(tmp / "data"),
        SIPAS_LOG_JSON="true",
        SIPAS_OUTBOX_POLL_SECONDS="0.1",
        PYTHONPATH=str(ROOT),
        SIPAS_INTERNAL_TOKEN=secrets.token_urlsafe(32),
    )
    if database_url:
        env.update(SIPAS_DATABASE_URL=database_url, SIPAS_SCHEMA_PREFIX=f"t{uid}_")
    if bus_url:
        env.update(SIPAS_BUS_URL=bus_url, SIPAS_EXCHANGE=f"sipas.test.{uid}", SIPAS_QUEUE_PREFIX=f"test.{uid}")
    urls = {}
    for name, port in zip(SERVICES, free_ports(len(SERVICES))):
        env[f"SIPAS_{name.upper()}_PORT"] = str(port)
        env[f"SIPAS_{name.upper()}_URL"] = f"http://127.0.0.1:{port}"
        urls[name] = f"http://127.0.0.1:{port}"
    return env, urls, uid
