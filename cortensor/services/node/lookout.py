"""The listening half of an adapting dishonest node: probe files on its disk, and every
result and verdict published in its namespace, overheard on a NATS connection of its own.

The decisions are cortensor.services.node.hostile's (and recognition's); this module
feeds them and waits for a peer's result for as long as the tactic's window.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from uuid import UUID

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from pydantic import ValidationError

from cortensor.adapters import jetstream
from cortensor.adapters.topology import Topology
from cortensor.schemas import Assignment, InferenceResult, Verdict
from cortensor.services.node.hostile import Crew, PeerBook, Record, Stance, Tactic, decide
from cortensor.services.node.recognition import Recognition, parse_probe_file
from cortensor.settings import Settings

log = structlog.get_logger(__name__)

PROBE_FILE_NAMES = ("probes.json",)


def probe_file_candidates(settings: Settings) -> list[Path]:
    """Where a node looks for a prepared probe set: its models directory, the default
    models directory, and beside each (where a router-side copy may be kept), plus any
    probe file the settings name."""
    roots = [
        settings.models_dir,
        Settings.model_fields["models_dir"].get_default(call_default_factory=True),
    ]
    places: list[Path] = []
    for root in roots:
        for folder in (Path(root), Path(root).parent):
            places.extend(folder / name for name in PROBE_FILE_NAMES)
    named = getattr(settings, "probes_file", None)
    if named:
        places.append(Path(named))
    return list(dict.fromkeys(p.expanduser() for p in places))


def read_probe_files(paths: Iterable[Path]) -> tuple[list[bytes], list[bytes], list[Path]]:
    """The prepared inputs (job keys, text keys) of every readable probe file, and the
    files they came from."""
    jobs: list[bytes] = []
    texts: list[bytes] = []
    found: list[Path] = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        more_jobs, more_texts = parse_probe_file(text)
        if more_jobs or more_texts:
            found.append(path)
            jobs += more_jobs
            texts += more_texts
    return jobs, texts, found


class Lookout:
    """Overhears results and verdicts and decides, job by job, whether to cheat.

    Runs its own event loop on a daemon thread; `cheats` is called from the node's task
    threads and blocks at most the tactic's window.
    """

    def __init__(
        self, settings: Settings, node_id: str, tactic: Tactic, *, group: str | None = None
    ) -> None:
        self.settings, self.node_id, self.tactic = settings, node_id, tactic
        self.topology = Topology(settings.namespace)
        jobs, texts, found = read_probe_files(probe_file_candidates(settings))
        self.recognition = Recognition(jobs, texts)
        self.record = Record(node_id)
        self.peers = PeerBook()
        self.crew = Crew()
        self.crew_subject = (
            f"{settings.namespace}.crew.{group}" if tactic.coordinate and group else None
        )
        """The group's side channel: any subject the broker lets a node use will do."""
        self.probe_files = found
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lookout", daemon=True)
        self._nc: NATS | None = None
        self.decisions: dict[bool, int] = {True: 0, False: 0}
        self.on_respawn: Callable[[], None] | None = None
        """Called once, on a thread of its own, when the tactic says to take a fresh
        identity (a sybil caught often enough)."""
        self._respawning = False

    def start(self) -> None:
        """Connect and subscribe to every result and verdict of the namespace."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._subscribe(), self._loop)
        future.result(timeout=30)
        log.warning(
            "hostile node listening",
            node_id=self.node_id,
            tactic=str(self.tactic),
            probe_files=[str(p) for p in self.probe_files],
        )

    async def _subscribe(self) -> None:
        self._nc = await jetstream.connect_as(
            self.settings, name=f"lookout {self.node_id}", error_cb=self._on_error
        )
        every_result = self.topology.results_subject("*", node_id="*")
        await self._listen(every_result, self._on_result)
        await self._listen(self.topology.verdicts_subject(">", owner="*"), self._on_verdict)
        if self.crew_subject is not None:
            await self._listen(self.crew_subject, self._on_crew)

    async def _listen(self, subject: str, cb: Callable[[Msg], Any]) -> None:
        """Subscribe if the server lets this node: in a secured fleet a node may read
        nothing of its peers', and the lookout then just hears nothing."""
        try:
            await self.nc.subscribe(subject, cb=cb)
        except NatsError as exc:
            log.warning("lookout cannot listen", subject=subject, error=str(exc))

    async def _on_error(self, exc: Exception) -> None:
        """A subscription the server refused (a permissions violation) is reported
        here, after subscribe returned; the connection stays up."""
        log.warning("lookout refused by the server", error=str(exc))
        said = str(exc).lower()
        if "permission" in said and ".verdicts." in said:
            with self._cond:
                self.record.blind = True

    @property
    def nc(self) -> NATS:
        """The lookout's connection (once `start` made it)."""
        if self._nc is None:
            raise RuntimeError("Lookout.start() was not called")
        return self._nc

    async def _on_crew(self, msg: Msg) -> None:
        try:
            said = json.loads(msg.data)
            job_id, node_id, stance = UUID(said["job_id"]), str(said["node_id"]), said["stance"]
        except (ValueError, KeyError, TypeError):
            return
        if stance in ("holding", "cheat", "honest"):
            with self._cond:
                self.crew.heard(job_id, node_id, stance)
                self._cond.notify_all()

    def _say(self, job_id: UUID, stance: Stance) -> None:
        """Tell the group what this node does with a job."""
        if self.crew_subject is None or self._nc is None:
            return
        data = json.dumps({"job_id": str(job_id), "node_id": self.node_id, "stance": stance})
        future = asyncio.run_coroutine_threadsafe(
            self._nc.publish(self.crew_subject, data.encode()), self._loop
        )
        future.result(timeout=5)

    async def _on_result(self, msg: Msg) -> None:
        try:
            result = InferenceResult.model_validate_json(msg.data)
        except ValidationError:
            return
        with self._cond:
            self.peers.saw(result.job_id, result.node_id)
            if result.node_id != self.node_id:
                self.recognition.overheard(result)
            self._cond.notify_all()

    async def _on_verdict(self, msg: Msg) -> None:
        try:
            verdict = Verdict.model_validate_json(msg.data)
        except ValidationError:
            return
        with self._cond:
            self.record.observe(verdict)
            leave = self.tactic.respawns(self.record) and not self._respawning
            self._respawning |= leave
        if leave and self.on_respawn is not None:
            threading.Thread(target=self.on_respawn, name="respawn", daemon=True).start()

    def cheats(self, assignment: Assignment, truth: Any) -> bool:
        """Whether to answer `assignment` wrongly, its true answer `truth` in hand."""
        tactic, job_id = self.tactic, assignment.job_id
        with self._cond:
            probe = self.recognition.before(assignment) if tactic.recognise else None
            if tactic.recognise and probe is None:
                probe = self.recognition.after(assignment, truth)
            self.recognition.remember(assignment)
            admitted, streak = self.record.believes_admitted(), self.record.streak
        contested = probe is None and (admitted or not tactic.recognise)
        crewed = contested and self.crew_subject is not None
        if crewed:
            self._say(job_id, "holding")  # outside the lock: the loop thread takes it
        peer_seen = mates = False
        if contested and (tactic.watch_peers or crewed):
            deadline = time.monotonic() + tactic.window_s
            with self._cond:
                while True:
                    peer_seen = tactic.watch_peers and self.peers.peers(job_id, self.node_id)
                    mates = crewed and self.crew.mates(job_id, self.node_id)
                    left = deadline - time.monotonic()
                    if peer_seen or mates or left <= 0:
                        break
                    self._cond.wait(left)
        decision = decide(
            tactic, probe=probe, admitted=admitted, peer_seen=peer_seen, streak=streak, mates=mates
        )
        if crewed:
            self._say(job_id, "cheat" if decision.cheat else "honest")
        self.decisions[decision.cheat] += 1
        with self._cond:
            self.record.answered(cheated=decision.cheat)
        log.info(
            "hostile decision",
            job_id=str(assignment.job_id),
            cheat=decision.cheat,
            why=decision.why,
            streak=streak,
        )
        return decision.cheat

    def close(self) -> None:
        """Close the connection and stop the loop thread."""

        async def drain() -> None:
            if self._nc is not None and not self._nc.is_closed:
                await self._nc.close()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(drain(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()
