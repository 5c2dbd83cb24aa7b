"""A Procfile fleet whose processes a test may kill: each Procfile process runs on its
own (under honcho, one exit stops every process), and the supervisor starts again what
the test killed. It does not restart a process that exited by itself: that is recorded
(`exited()`), since no process of the fleet should exit while a server is away.

Processes are named as honcho names them (router.1, guard.1, node.1 .. node.N) and run
the Procfile's command lines through the shell, with HONCHO_PROCESS_NAME and
CORTENSOR_FLEET_DIR set as honcho sets them, on the credentials `Fleet` issues.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cortensor.paths import ROOT, checkout_path
from cortensor.settings import Settings
from cortensor.tools.credentials import fleet_node_id
from cortensor.tools.fleet import Fleet, FleetError
from tests.chaos.servers import kill_tree


def procfile() -> dict[str, str]:
    """The Procfile's process types and their command lines."""
    kinds: dict[str, str] = {}
    for line in checkout_path("Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            kind, command = line.split(":", 1)
            kinds[kind.strip()] = command.strip()
    return kinds


@dataclass
class Kill:
    """One kill -9 the test made: which process, its pid, when (monotonic seconds)."""

    name: str
    pid: int
    at: float
    respawned_at: float | None = None


@dataclass
class _Running:
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    expected_down: bool = False


class Supervised(Fleet):
    """A `Fleet` started process by process instead of through honcho."""

    def __init__(
        self,
        settings: Settings,
        *,
        log_dir: Path,
        nodes: int = 3,
        routers: int = 1,
        guards: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(settings, nodes=nodes, log_dir=log_dir, env=env)
        self.routers = routers
        self.guards = guards
        self.kills: list[Kill] = []
        """Every kill -9 made, in order."""
        self._running: dict[str, _Running] = {}
        self._commands = procfile()

    def names(self) -> list[str]:
        """Every process of the fleet, as honcho names them (one of each Procfile type
        but the router, the guard, the nodes, the generators and the gateway, which come
        as many as asked)."""
        counts = {kind: 1 for kind in self._commands}
        counts.update(
            router=self.routers,
            guard=self.guards,
            node=self.nodes,
            generator=self.generators,
            gateway=self.gateways,
        )
        return [f"{kind}.{i}" for kind, n in counts.items() for i in range(1, n + 1)]

    def node_id(self, name: str) -> str:
        """The node id of process `name` (node.<i> or generator.<i>)."""
        kind, index = name.rsplit(".", 1)
        return fleet_node_id(int(index), kind)

    def spawn(self, name: str) -> int:
        """Start process `name` from its Procfile line; returns its pid."""
        kind = name.split(".", 1)[0]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {self._commands[kind]}"],
            env={**self.env, "HONCHO_PROCESS_NAME": name},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._running[name] = _Running(process, log)
        self._procs.append((process, log))  # what Fleet.wait_ready watches
        return process.pid

    def start(self) -> None:
        """Issue the fleet's credentials, then start every process."""
        try:
            self._issue()
        except BaseException:
            self._revoke()
            raise
        for name in self.names():
            self.spawn(name)

    def pid(self, name: str) -> int:
        """The pid of process `name`."""
        return self._running[name].process.pid

    def kill9(self, name: str) -> Kill:
        """SIGKILL process `name` (and anything it started)."""
        running = self._running[name]
        running.expected_down = True
        kill = Kill(name, running.process.pid, time.monotonic())
        kill_tree(running.process.pid)
        running.process.wait(timeout=10)
        self.kills.append(kill)
        return kill

    def freeze(self, name: str) -> None:
        """SIGSTOP process `name`: it holds what it took (fetched results, prefetched
        assignments) and does nothing with it, as a process stuck in swap would."""
        os.killpg(self._running[name].process.pid, signal.SIGSTOP)

    def respawn(self, name: str) -> int:
        """Start process `name` again after a kill; returns its new pid."""
        old = self._running.pop(name)
        self._procs.remove((old.process, old.log))
        old.log.close()
        pid = self.spawn(name)
        for kill in reversed(self.kills):
            if kill.name == name and kill.respawned_at is None:
                kill.respawned_at = time.monotonic()
                break
        return pid

    def exited(self) -> list[str]:
        """Processes that exited without being killed by the test, with their codes."""
        return [
            f"{name} (exit {r.process.returncode})"
            for name, r in self._running.items()
            if not r.expected_down and r.process.poll() is not None
        ]

    def revive(self) -> list[str]:
        """Start again every process that is not running (between scenarios); returns
        their names."""
        dead = [n for n, r in self._running.items() if r.process.poll() is not None]
        for name in dead:
            self._running[name].expected_down = True
            self.respawn(name)
        return dead

    def processes(self) -> dict[str, int]:
        """Each running process's pid, by name."""
        return {n: r.process.pid for n, r in self._running.items() if r.process.poll() is None}

    def ready(self, timeout_s: float = 180.0) -> list[str]:
        """Wait until every node is live and admitted (FleetError names the logs)."""
        return self.wait_ready(timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM every process, SIGKILL what is left, revoke the credentials."""
        for running in self._running.values():
            if running.process.poll() is None:
                os.killpg(running.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for running in self._running.values():
            try:
                running.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                kill_tree(running.process.pid)
                running.process.wait()
            running.log.close()
        self._running.clear()
        self._procs.clear()
        self._revoke()


async def kill_at_random(
    fleet: Supervised,
    name: str,
    *,
    within: tuple[float, float],
    down_s: float = 1.0,
    frozen_s: float = 0.0,
    rng: random.Random,
) -> Kill:
    """Wait a random time in `within` (seconds), kill -9 process `name` (frozen with
    SIGSTOP for `frozen_s` seconds first, if any), leave it down `down_s` seconds, start
    it again."""
    await asyncio.sleep(rng.uniform(*within))
    if frozen_s:
        fleet.freeze(name)
        await asyncio.sleep(frozen_s)
    kill = fleet.kill9(name)
    await asyncio.sleep(down_s)
    fleet.respawn(name)
    return kill


__all__ = ["FleetError", "Kill", "Supervised", "kill_at_random", "procfile"]
