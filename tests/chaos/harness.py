"""The chaos harness: private servers to break, a fleet to kill, a load to count.

API (for every chaos scenario, tests/chaos/test_*.py):

    with private_network(root, models_dir, nodes=3, env={...}) as net:   # a Network
        net.postgres, net.rabbitmq, net.nats      # private servers (tests/chaos/servers.py)
        net.admin                                 # Settings of the operator on them
        net.client                                # Settings of a client (client.json)
        net.fleet                                 # a Supervised fleet (supervisor.py)
        net.fleet.kill9("router.1"); net.fleet.respawn("router.1")
        await kill_at_random(net.fleet, "node.2", within=(2, 10), rng=rng)  # frozen_s=3
        await down_for(net.postgres, 15)          # also net.nats, net.rabbitmq; hard=True
        tally = await drive("name", admin=net.admin, client=net.client,
                            load=Load(jobs=150, rate=10, deadline_s=60),
                            disturbances=[...], pids=net.pids)
        net.observe(tally).report()               # kills, excused nodes, exits; print
        assert_nothing_lost(tally)                # lost, duplicates, honest punished
        assert_rides_through(tally)               # and nothing refused, no process exited

- `private_network` starts a PostgreSQL cluster, a RabbitMQ node and a nats-server of
  their own on free ports (their data survives stop and kill9), makes the operator's
  credentials there (`credentials.bootstrap_admin`, with the RabbitMQ node's own
  rabbitmqctl first on PATH and the NATS users under the private state directory),
  migrates a ledger, sets up the brokers, and starts a fleet from the Procfile, one
  process at a time, on credentials issued by `cortensor.tools.credentials` (router,
  guard, reports, node-1 .. node-N, client). `Network.ensure()` brings a network back
  between scenarios: every server up, every process running, every node admitted.
- Every server: start(), stop(), kill9(), pids(); `restart(server)` and
  `await down_for(server, seconds, hard=False)` (the seconds it was unreachable).
- The fleet (a `cortensor.tools.fleet.Fleet`): names() (router.1, guard.1, node.1 ..),
  node_id(name), kill9(name), freeze(name) (SIGSTOP: it holds what it took), respawn(name),
  exited() (processes that died without a kill), revive(), processes(), ready(), kills
  (the Kill records).
- `drive` submits `Load.jobs` embed jobs (redundancy 3 by default) at `Load.rate` per
  second through the SDK while the disturbances run, waits for the verdicts (at most
  the last deadline plus `Load.grace_s`), and returns a `Tally`: submitted, accepted,
  refused (raised to the caller), verdicts by status, lost (no verdict published
  within deadline + grace), duplicates (two verdicts of one revision on a job's
  subject in the verdicts stream, or contradicting statuses), charges (timed_out and
  disagreed events during the run, by node), nodes quarantined during the run (and
  those already in quarantine before it, for the record), peak memory (VmHWM,
  sampled every second) of every process `pids` names (router.1 .. node.N, and the
  servers by name). `Tally.report()` prints one `CHAOS-SUMMARY {json}` line (the
  issue's closing note quotes them) and appends it to $CORTENSOR_CHAOS_REPORT.

Every node of the fleet is honest. A node the scenario kills does drop the work it
held, so its charges for that are deserved: the scenario adds it to `tally.excused`.
No node, killed or not, may be quarantined during the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from cortensor.adapters.ledger import migrate
from cortensor.adapters.provision import setup_brokers
from cortensor.settings import Settings
from cortensor.tools import credentials
from tests.chaos.load import Load, Tally, drive
from tests.chaos.servers import NatsServer, PostgresServer, RabbitServer, down_for, restart
from tests.chaos.supervisor import Kill, Supervised, kill_at_random
from tests.conftest import unique_name

__all__ = [
    "Kill",
    "Load",
    "Network",
    "Tally",
    "assert_nothing_lost",
    "assert_rides_through",
    "down_for",
    "drive",
    "kill_at_random",
    "private_network",
    "restart",
    "seeded",
]

ROOM = {"CORTENSOR_ASSIGNMENT_TIMEOUT_S": "30", "CORTENSOR_AUDIO_TIMEOUT_FACTOR": "4"}
"""Three nodes share two cores here with other test runs beside them: an assignment (and
an admission probe) gets room, so that a busy machine is not taken for a dead node."""


@dataclass
class Network:
    """Private servers, the operator's and a client's settings there, and a fleet."""

    postgres: PostgresServer
    rabbitmq: RabbitServer
    nats: NatsServer
    admin: Settings
    client: Settings
    fleet: Supervised

    @property
    def servers(self) -> tuple[PostgresServer, RabbitServer, NatsServer]:
        """The three servers."""
        return (self.postgres, self.rabbitmq, self.nats)

    def pids(self) -> dict[str, list[int]]:
        """Every process to sample, by name: the fleet's, then the servers'."""
        named = {name: [pid] for name, pid in self.fleet.processes().items()}
        named.update({server.name: server.pids() for server in self.servers})
        return named

    def observe(self, tally: Tally) -> Tally:
        """Add what the fleet saw to `tally`: the kills made (a killed node's charges for
        the work it dropped are excused) and the processes that exited by themselves."""
        tally.kills = [kill.name for kill in self.fleet.kills]
        nodes = [kill.name for kill in self.fleet.kills if kill.name.startswith("node.")]
        tally.excused |= {self.fleet.node_id(name) for name in nodes}
        tally.exited = self.fleet.exited()
        return tally

    def ensure(self, timeout_s: float = 180.0) -> None:
        """Every server up, every fleet process running, every node admitted: what each
        scenario starts from, whatever the one before it left."""
        for server in self.servers:
            if not server.pids():
                server.start()
        self.fleet.revive()
        self.fleet.ready(timeout_s)
        self.wait_idle(timeout_s)
        self.fleet.kills.clear()

    def wait_idle(self, timeout_s: float = 180.0) -> None:
        """Wait until no job is open (the admission probes of a fresh fleet, the jobs of
        the scenario before), so that a scenario's nodes start with empty queues."""
        deadline = time.monotonic() + timeout_s
        while True:
            with psycopg.connect(self.admin.asyncpg_dsn) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM jobs WHERE status IN ('waiting', 'running')"
                ).fetchone()
            if row is not None and row[0] == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{row} jobs still open after {timeout_s:g} s")
            time.sleep(0.5)


def _admin(
    root: Path, postgres: PostgresServer, rabbitmq: RabbitServer, nats: NatsServer, **kw: object
) -> Settings:
    """The operator's credentials on the private servers, and their settings."""
    base = Settings(
        credentials=None,
        amqp_url=rabbitmq.url,
        nats_url=nats.url,
        database_url=postgres.url("chaos"),
        state_dir=nats.state_dir,
        **kw,  # type: ignore[arg-type]
    )
    out = credentials.bootstrap_admin(base, root / "admin.json")
    return Settings(
        credentials=out,
        database_url=postgres.url("chaos"),
        state_dir=nats.state_dir,
        **kw,  # type: ignore[arg-type]
    )


@contextlib.contextmanager
def private_network(
    root: Path,
    models_dir: Path,
    *,
    nodes: int = 3,
    env: dict[str, str] | None = None,
    ready_s: float = 240.0,
) -> Iterator[Network]:
    """Private servers and a fleet on them, torn down afterwards (see the module's doc).
    The environment of this process is left as it was: PATH gets the RabbitMQ node's
    rabbitmqctl in front only meanwhile, and CORTENSOR_CREDENTIALS (the shared
    servers' operator) is set aside."""
    root.mkdir(parents=True, exist_ok=True)
    postgres = PostgresServer()
    rabbitmq = RabbitServer(root / "rabbitmq")
    nats = NatsServer(root / "state")
    started: list[PostgresServer | RabbitServer | NatsServer] = []
    fleet: Supervised | None = None
    with contextlib.ExitStack() as stack:
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        patch.setenv("PATH", f"{rabbitmq.ctl_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        patch.delenv("CORTENSOR_CREDENTIALS", raising=False)
        try:
            began = time.monotonic()
            for server in (postgres, rabbitmq):
                started.append(server)
                server.start()
            kw = {"namespace": unique_name("chaos"), "models_dir": models_dir}
            admin = _admin(root, postgres, rabbitmq, nats, **kw)
            started.append(nats)
            nats.start()
            migrate.upgrade(admin)
            asyncio.run(setup_brokers(admin))
            fleet = Supervised(
                admin, log_dir=root / "fleet", nodes=nodes, env={**ROOM, **(env or {})}
            )
            fleet.start()
            fleet.ready(ready_s)
            client = Settings(credentials=root / "fleet" / "client.json", models_dir=models_dir)
            network = Network(postgres, rabbitmq, nats, admin, client, fleet)
            network.wait_idle(ready_s)
            print(f"chaos network up in {time.monotonic() - began:.0f} s; logs under {root}")
            yield network
        finally:
            if fleet is not None:
                for server in started:
                    if not server.pids():
                        server.start()  # revoking the fleet's credentials needs them
                fleet.stop()
            for server in reversed(started):
                server.stop()
            postgres.destroy()
            shutil.rmtree(root / "state" / "nats" / "store", ignore_errors=True)


def seeded() -> tuple[int, random.Random]:
    """A scenario's seed (CORTENSOR_CHAOS_SEED, else a fresh one) and its generator: the
    summary prints the seed, so that the moments of a failed run can be replayed."""
    seed = int(os.environ.get("CORTENSOR_CHAOS_SEED") or random.SystemRandom().getrandbits(32))
    return seed, random.Random(seed)


def assert_nothing_lost(tally: Tally) -> None:
    """The three promises of every scenario: no job lost, no duplicate verdict, no
    honest node punished (charged or quarantined)."""
    summary = tally.summary()
    assert not tally.lost, f"{len(tally.lost)} lost jobs, e.g. {tally.lost[:3]}; {summary}"
    assert not tally.duplicates, f"duplicate verdicts: {tally.duplicates[:3]}; {summary}"
    assert not tally.honest_punished, (
        f"honest nodes punished: charged {tally.honest_charged},"
        f" quarantined {tally.quarantined}; {summary}"
    )


def assert_rides_through(tally: Tally) -> None:
    """What an outage of a server must not do either: make a submission fail to the
    caller (the SDK retries until the job's deadline), or make a process exit."""
    assert not tally.refused, (
        f"{len(tally.refused)} submissions raised, e.g. {tally.refused[:2]}; {tally.summary()}"
    )
    assert not tally.exited, f"processes exited: {tally.exited}; {tally.summary()}"
