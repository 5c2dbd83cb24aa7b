"""Running a whole fleet from the Procfile: for the demo, the end-to-end tests and the bench.

`honcho start -c node=N` starts the router, the guard and N nodes exactly as an
operator would (and the HTTP gateway when asked for: `gateways=1`, on
CORTENSOR_GATEWAY_PORT, which the fleet's `env` may set); extra nodes (a dishonest
one, say) run beside it as plain processes.
Every process runs on credentials of its own, issued into the log directory before
the fleet starts (`cortensor credentials fleet`, one file per extra node) and revoked
when it stops: the settings the fleet is given are the admin's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, LiteralString, Self

import psycopg

from cortensor.adapters.principals.grants import Kind
from cortensor.errors import CortensorError
from cortensor.paths import ROOT, checkout_path
from cortensor.settings import Settings
from cortensor.tools import credentials


class FleetError(CortensorError, RuntimeError):
    """The fleet did not come up; the message points at its logs."""


class Fleet:
    """A router, a guard and nodes, as child processes on credentials of their own,
    issued with `settings` (the admin's, in the fleet's namespace and ledger)."""

    def __init__(
        self,
        settings: Settings,
        *,
        nodes: int = 3,
        routers: int = 1,
        guards: int = 1,
        gateways: int = 0,
        generators: int = 0,
        extra_nodes: list[list[str]] | None = None,
        log_dir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.nodes = nodes
        self.gateways = gateways
        """Gateways the fleet runs: none unless asked, as each takes a port (by default
        8080, which two fleets on one host would both want)."""
        self.generators = generators
        """Nodes of the language model (the Procfile's `generator`): none unless asked."""
        self.concurrency = (
            f"router={routers},guard={guards},node={nodes},generator={generators},"
            f"gateway={gateways}"
        )
        self.extra_nodes = extra_nodes or []
        self.log_dir = log_dir
        bin_dir = str(Path(sys.executable).parent)
        inherited = {k: v for k, v in os.environ.items() if k != "CORTENSOR_CREDENTIALS"}
        self.env = {
            **inherited,  # never the admin's credentials: each process gets its own
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "CORTENSOR_NAMESPACE": settings.namespace,
            "CORTENSOR_MODELS_DIR": str(settings.models_dir),
            "CORTENSOR_FLEET_DIR": str(log_dir),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self._procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
        self._issued: list[tuple[Kind, str]] = []

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._procs.append((proc, log))

    def extra_node_id(self, index: int) -> str:
        """The id of extra node `index` (from 1): its --node-id, else extra-<index>."""
        args = self.extra_nodes[index - 1]
        given = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--node-id"]
        return given[-1] if given else f"extra-{index}"

    def _issue(self) -> None:
        """Issue every process's credentials into the log directory."""
        local = credentials.local_hw_class(self.settings)
        issued = credentials.issue_fleet(
            self.settings,
            self.log_dir,
            nodes=self.nodes,
            generators=self.generators,
            hw_class=local,
        )
        self._issued += [(done.kind, done.name) for done in issued]
        for i, args in enumerate(self.extra_nodes, start=1):
            given = [args[j + 1] for j, a in enumerate(args[:-1]) if a == "--hw-class"]
            node_id = self.extra_node_id(i)
            credentials.issue(
                self.settings,
                "node",
                node_id,
                self.log_dir / f"extra-node-{i}.json",
                hw_class=given[-1] if given else local,
            )
            self._issued.append(("node", node_id))

    def _revoke(self) -> None:
        issued, self._issued = self._issued, []
        credentials.revoke_all(self.settings, issued)

    def start(self) -> None:
        """Issue the fleet's credentials, start honcho with the Procfile, then the extra
        nodes."""
        try:
            self._issue()
        except BaseException:
            self._revoke()
            raise
        bin_dir = Path(sys.executable).parent
        self._spawn(
            "honcho",
            [
                str(bin_dir / "honcho"),
                "start",
                "-f",
                str(checkout_path("Procfile")),
                "-d",
                str(ROOT),
                "-c",
                self.concurrency,
            ],
        )
        for i, args in enumerate(self.extra_nodes, start=1):
            own = str(self.log_dir / f"extra-node-{i}.json")
            self._spawn(
                f"extra-node-{i}", [str(bin_dir / "cortensor"), "--credentials", own, "node", *args]
            )

    def _node_ids(self, query: LiteralString) -> list[str]:
        with psycopg.connect(self.settings.asyncpg_dsn) as conn:
            return [r[0] for r in conn.execute(query).fetchall()]

    def live_nodes(self) -> list[str]:
        """Nodes the router has recorded as up in the last few seconds."""
        return self._node_ids(
            "SELECT node_id FROM nodes WHERE status = 'up'"
            " AND last_seen > now() - interval '5 seconds' ORDER BY node_id"
        )

    def active_nodes(self) -> list[str]:
        """Nodes admitted to real jobs (they passed their known-answer probes)."""
        return self._node_ids(
            "SELECT node_id FROM node_standing WHERE model = '' AND trust = 'active'"
            " ORDER BY node_id"
        )

    def _own_nodes(self) -> set[str]:
        """The ids of the nodes this fleet issued credentials to."""
        return {name for kind, name in self._issued if kind == "node"}

    def holding(self) -> int:
        """Assignments this fleet's nodes hold: neither answered nor charged yet."""
        with psycopg.connect(self.settings.asyncpg_dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM assignments WHERE status = 'assigned' AND node_id = ANY(%s)",
                (sorted(self._own_nodes()),),
            ).fetchone()
        return 0 if row is None else int(row[0])

    def wait_idle(self, timeout_s: float = 60.0, poll_s: float = 0.5) -> int:
        """Wait until this fleet's nodes hold no assignment, at most `timeout_s`; returns
        what they still hold. A job is decided once a majority agrees, while a slower
        node may still be running its replica: stopped then, the node would leave the
        replica unanswered, and whatever router or guard next runs on the ledger would
        charge it once the deadline passed. Waiting lets it answer, or be charged by this
        fleet for a deadline it did miss."""
        deadline = time.monotonic() + timeout_s
        held = self.holding()
        while held and time.monotonic() < deadline:
            time.sleep(poll_s)
            held = self.holding()
        return held

    def wait_ready(self, timeout_s: float = 120.0, *, admitted: int | None = None) -> list[str]:
        """Wait until every node has announced itself to the router and `admitted` of
        them (default: the Procfile's nodes; extra nodes may be dishonest) passed their
        probes; returns the live nodes. Only this fleet's own nodes (those it issued
        credentials to) count: a ledger shared with other fleets holds their admitted
        nodes too, and counting them would send jobs to nodes still on probation."""
        expected = self.nodes + self.generators + len(self.extra_nodes)
        wanted = self.nodes + self.generators if admitted is None else admitted
        own = self._own_nodes()
        deadline = time.monotonic() + timeout_s
        live: list[str] = []
        active: list[str] = []
        while time.monotonic() < deadline:
            for proc, _ in self._procs:
                if proc.poll() is not None:
                    raise FleetError(f"a fleet process exited ({proc.args!r}); see {self.log_dir}")
            live = [n for n in self.live_nodes() if n in own]
            if len(live) >= expected:
                active = [n for n in self.active_nodes() if n in own]
                if len(active) >= wanted:
                    return live
            time.sleep(0.5)
        raise FleetError(
            f"{len(live)} of {expected} nodes up and {len(active)} of {wanted} admitted"
            f" after {timeout_s:g}s; see {self.log_dir}"
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM everything (honcho passes it on), wait, then kill what is left, and
        revoke the fleet's credentials."""
        for proc, _ in self._procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc, log in self._procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
        self._procs.clear()
        self._revoke()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
