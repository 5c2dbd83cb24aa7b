"""The clustered deployment (ops/cluster) loses one RabbitMQ node and one NATS server in
the middle of a run: nothing lost, every job terminal, no duplicate verdict.

`ops/cluster up` starts a 3-node RabbitMQ cluster and a 3-node NATS cluster on this
machine and writes the operator's credentials for them; the fleet (router, guard, three
nodes, from the Procfile) runs on credentials issued there, its ledger on the shared
PostgreSQL. While a client submits embed jobs at redundancy 3, the node that leads the
router's quorum queue and the server that leads the results stream are killed with
SIGKILL and left down until every verdict is in: the fleet finishes on two of three of
each. Then `ops/cluster up` starts them again, they rejoin, and `ops/cluster down`
removes the cluster.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cortensor.adapters import jetstream
from cortensor.adapters.ledger import migrate
from cortensor.adapters.provision import setup_brokers
from cortensor.adapters.topology import Topology
from cortensor.paths import ROOT
from cortensor.settings import Settings
from tests.chaos.harness import ROOM, Load, assert_nothing_lost, drive, seeded
from tests.chaos.supervisor import Supervised
from tests.conftest import unique_name

# 3 to 7 minutes here (the cluster's start and stop among them, as the machine is busy):
# outside CI's default subset, with the other long chaos scenarios (ops/chaos,
# CORTENSOR_CHAOS=full, or -m chaos_full).
pytestmark = [
    pytest.mark.cluster,
    pytest.mark.chaos_full,
    pytest.mark.slow,
    pytest.mark.models,
    pytest.mark.e2e,
    pytest.mark.timeout(900),
]

CLUSTER_DIR = Path.home() / ".local" / "share" / "cortensor" / "cluster"
RABBITMQ_DIR = Path("/var/lib/rabbitmq/cortensor-cluster")
CREDENTIALS = Path.home() / ".config" / "cortensor" / "cluster-admin.json"
NODES = (1, 2, 3)


def ops_cluster(command: str, timeout_s: float = 420.0) -> str:
    """Run `ops/cluster COMMAND` with the default state directories; its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CORTENSOR_", "RABBITMQ_"))}
    done = subprocess.run(
        [str(ROOT / "ops" / "cluster"), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, f"ops/cluster {command}: {done.stdout}{done.stderr}"
    return done.stdout


def rabbit_pid(n: int) -> int:
    return int((RABBITMQ_DIR / f"n{n}" / "pid").read_text().strip())


def nats_pid(n: int) -> int:
    return int((CLUSTER_DIR / "nats" / f"n{n}.pid").read_text().strip())


def varz(n: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{8230 + n}/varz", timeout=5) as response:
        found: dict[str, object] = json.load(response)
        return found


def quorum(queue: str) -> tuple[int, int]:
    """The number of the RabbitMQ node that leads quorum queue `queue`, and how many
    nodes hold it."""
    ctl = ["rabbitmqctl", "-q", "-n", "cortensor-2@localhost", "list_queues"]
    out = subprocess.run(
        [*ctl, "name", "leader", "members", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for line in out.splitlines():
        name, leader, members = line.split("\t")
        if name == queue:
            return int(leader.split("@")[0].rsplit("-", 1)[1]), members.count("@")
    raise AssertionError(f"no quorum queue {queue} in {out!r}")


async def stream_leader(admin: Settings, stream: str) -> tuple[int, list[str]]:
    """The number of the NATS server that leads `stream`, and the stream's replicas."""
    nc = await jetstream.connect_as(admin, name="test-cluster")
    try:
        info = await nc.jetstream().stream_info(stream)
    finally:
        await nc.close()
    assert info.cluster is not None
    assert info.cluster.leader is not None
    replicas = [info.cluster.leader] + [r.name for r in info.cluster.replicas or []]
    return int(info.cluster.leader.rsplit("-", 1)[1]), replicas


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} outlived SIGKILL")


MACHINE_CTL_DIRS = ("/usr/sbin", "/sbin")
"""Where the machine's rabbitmqctl is: the one that uses the machine's Erlang cookie, as
the cluster's nodes do (they run as the rabbitmq user)."""


def machine_path() -> str:
    """PATH without the directories of any other rabbitmqctl: the chaos package's private
    network (tests/chaos/conftest.py) puts its RabbitMQ node's own first for as long as
    it lives, and with that one (and its cookie) every call to the cluster's nodes fails
    the Erlang handshake."""
    kept = [
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d in MACHINE_CTL_DIRS or not (Path(d) / "rabbitmqctl").exists()
    ]
    return os.pathsep.join(kept)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Path]:
    """The cluster, up for this module and removed after it; meanwhile PATH finds the
    machine's rabbitmqctl (`machine_path`), for ops/cluster and for the credentials
    issued here alike."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", machine_path())
        ops_cluster("up")
        try:
            yield CREDENTIALS
        finally:
            ops_cluster("down", timeout_s=180)


async def test_a_fleet_on_the_cluster_loses_a_rabbitmq_node_and_a_nats_server(
    cluster: Path, models_dir: Path, tmp_path: Path
) -> None:
    seed, rng = seeded()
    admin = Settings(
        credentials=cluster,
        namespace=unique_name("cluster"),
        database_url=f"postgresql://127.0.0.1:5432/{unique_name('cortensor_cluster_')}",
        models_dir=models_dir,
    )
    assert len(admin.amqp_urls) == len(admin.nats_urls) == 3
    assert admin.stream_replicas == 3
    # Every server of the cluster fsyncs before it acks (docs/design.md, Delivery).
    for n in NODES:
        config = varz(n)["jetstream"]["config"]  # type: ignore[index]
        assert config["sync_always"] is True, config  # type: ignore[index]

    topology = Topology(admin.namespace)
    migrate.upgrade(admin)
    fleet: Supervised | None = None
    try:
        await setup_brokers(admin)
        leader, replicas = await stream_leader(admin, topology.results_stream)
        assert len(replicas) == 3, replicas
        fleet = Supervised(admin, log_dir=tmp_path / "fleet", nodes=3, env=ROOM)
        await asyncio.to_thread(fleet.start)
        await asyncio.to_thread(fleet.ready, 300.0)
        client = Settings(credentials=tmp_path / "fleet" / "client.json", models_dir=models_dir)
        first_leader, members = quorum(topology.router_queue)
        assert members == 3, f"the router's queue is on {members} nodes"
        killed: dict[str, int] = {}

        async def kill_rabbitmq() -> None:
            await asyncio.sleep(rng.uniform(4, 8))
            n, _ = quorum(topology.router_queue)
            killed["rabbitmq"] = n
            kill9(rabbit_pid(n))

        async def kill_nats() -> None:
            await asyncio.sleep(rng.uniform(10, 14))
            n, _ = await stream_leader(admin, topology.results_stream)
            killed["nats"] = n
            kill9(nats_pid(n))

        def pids() -> dict[str, list[int]]:
            named = {name: [pid] for name, pid in fleet.processes().items()}  # type: ignore[union-attr]
            for n in NODES:
                if killed.get("rabbitmq") != n:
                    named[f"rabbitmq-{n}"] = [rabbit_pid(n)]
                if killed.get("nats") != n:
                    named[f"nats-{n}"] = [nats_pid(n)]
            return named

        load = Load(jobs=100, rate=5.0, redundancy=3, deadline_s=90.0)
        tally = await drive(
            "cluster: kill -9 of a RabbitMQ node and a NATS server",
            admin=admin,
            client=client,
            load=load,
            disturbances=[kill_rabbitmq(), kill_nats()],
            pids=pids,
        )
        tally.seed = seed
        tally.kills = [f"rabbitmq-{killed.get('rabbitmq')}", f"nats-{killed.get('nats')}"]
        tally.exited = fleet.exited()
        tally.report()
        print(f"router queue led by rabbitmq-{first_leader}, results by nats-{leader} at start")

        assert set(killed) == {"rabbitmq", "nats"}, killed
        assert tally.accepted == load.jobs, tally.refused[:3]
        assert sum(tally.verdicts.values()) == load.jobs, tally.summary()
        assert_nothing_lost(tally)
        assert not tally.exited, tally.exited

        # Both come back and rejoin: the cluster is whole again.
        await asyncio.to_thread(ops_cluster, "up")
        status = await asyncio.to_thread(ops_cluster, "status")
        assert sum(" up" in line for line in status.splitlines()) == 6, status
        _, replicas = await stream_leader(admin, topology.results_stream)
        assert len(replicas) == 3, replicas
        assert quorum(topology.router_queue)[1] == 3
    finally:
        if fleet is not None:
            await asyncio.to_thread(ops_cluster, "up")  # revoking needs every server
            await asyncio.to_thread(fleet.stop)
        migrate.drop_database(admin)
