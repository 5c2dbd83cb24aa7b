"""The listening half of an adaptive node, on the real NATS server: it reads its own
record off the verdicts subject, waits its window for a peer's result, and recognises
prepared probes and answers another job already had."""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from cortensor.adapters import jetstream
from cortensor.adapters.topology import Topology
from cortensor.schemas import Assignment, InferenceResult, Verdict
from cortensor.services.node.hostile import ADAPTIVE, SYBIL
from cortensor.services.node.lookout import Lookout, probe_file_candidates
from cortensor.settings import Settings
from tests.conftest import make_settings

pytestmark = [pytest.mark.nats]

ME = "hostile-1"
PROBE_TEXT = "A sentence only the prepared probes hold."


def job(text: str) -> Assignment:
    return Assignment(
        job_id=uuid.uuid4(),
        node_id=ME,
        task="embed",
        model="all-MiniLM-L6-v2",
        inputs=[text],
        hw_class="cpu-int8",
        deadline_at=datetime(2030, 1, 1, tzinfo=UTC),
    )


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((1, 384)).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    models = tmp_path / "models"
    models.mkdir()
    probe = {"model": "all-MiniLM-L6-v2", "task": "embed", "inputs": [PROBE_TEXT]}
    (models / "probes.json").write_text(json.dumps({"source": "", "probes": [probe]}))
    return make_settings(models)


@pytest.fixture
def lookout(settings: Settings) -> Iterator[Lookout]:
    watcher = Lookout(settings, ME, ADAPTIVE)
    watcher.start()
    yield watcher
    watcher.close()


def publish(settings: Settings, messages: list[tuple[str, bytes]], delay_s: float = 0.0) -> None:
    async def send() -> None:
        nc = await jetstream.connect(settings.nats_url, name="test publisher")
        await asyncio.sleep(delay_s)
        for subject, data in messages:
            await nc.publish(subject, data)
        await nc.flush()
        await nc.close()

    asyncio.run(send())


@contextmanager
def connected_peer(settings: Settings) -> Iterator[Callable[[str, bytes], None]]:
    """A peer connected before the window opens (logging in may take longer than the
    window): what it is handed it publishes 10 ms later, from a thread of its own."""
    outbox: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
    connected = threading.Event()

    async def serve() -> None:
        nc = await jetstream.connect(settings.nats_url, name="test peer")
        connected.set()
        while (message := await asyncio.to_thread(outbox.get)) is not None:
            await asyncio.sleep(0.01)
            await nc.publish(*message)
            await nc.flush()
        await nc.close()

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    try:
        assert connected.wait(10), "the peer could not connect"
        yield lambda subject, data: outbox.put((subject, data))
    finally:
        outbox.put(None)
        thread.join(10)


def result(job_id: uuid.UUID, node: str, embedding: np.ndarray) -> bytes:
    return (
        InferenceResult(
            assignment_id=uuid.uuid4(),
            job_id=job_id,
            node_id=node,
            model="all-MiniLM-L6-v2",
            hw_class="cpu-fp32",
            precision="fp32",
            embeddings=embedding.tolist(),
        )
        .model_dump_json()
        .encode()
    )


def wait_for(condition: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not callable(condition) or not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_the_probe_files_it_finds(settings: Settings, lookout: Lookout) -> None:
    assert settings.models_dir / "probes.json" in probe_file_candidates(settings)
    assert settings.models_dir / "probes.json" in lookout.probe_files


def test_an_adaptive_node_cheats_only_when_admitted_unwatched_and_unprobed(
    settings: Settings, lookout: Lookout
) -> None:
    topology = Topology(settings.namespace)
    assert not lookout.cheats(job("Before admission."), vector(1)), "every job a probe"

    admitting = Verdict(job_id=uuid.uuid4(), status="verified", agreeing=[ME, "h"], replicas=3)
    subject = topology.verdict_subject(admitting)
    publish(settings, [(subject, admitting.model_dump_json().encode())])
    wait_for(lambda: lookout.record.admitted)
    assert lookout.record.streak == 1

    alone = job("Nobody else runs this one.")
    started = time.monotonic()
    assert lookout.cheats(alone, vector(2))
    assert time.monotonic() - started >= ADAPTIVE.window_s, "it waited its window first"

    watched = job("A peer answers this one within the window.")
    subject = topology.results_subject(str(watched.job_id), node_id="h")
    with connected_peer(settings) as send:
        send(subject, result(watched.job_id, "h", vector(3)))
        assert not lookout.cheats(watched, vector(3))

    assert not lookout.cheats(job(PROBE_TEXT), vector(4)), "a prepared probe"
    assert not lookout.cheats(job("Nobody else runs this one."), vector(2)), "sent before"

    earlier = uuid.uuid4()
    heard = vector(5)
    subject = topology.results_subject(str(earlier), node_id="h")
    publish(settings, [(subject, result(earlier, "h", heard))])
    wait_for(lambda: lookout.peers.peers(earlier, ME))
    assert not lookout.cheats(job("A text re-sent by the network."), heard), "a replay"

    caught = Verdict(job_id=uuid.uuid4(), status="verified", agreeing=["h"], disagreeing=[ME])
    subject = topology.verdict_subject(caught)
    publish(settings, [(subject, caught.model_dump_json().encode())])
    wait_for(lambda: not lookout.record.admitted)
    assert not lookout.cheats(job("After it was caught."), vector(6))
    assert lookout.decisions == {True: 1, False: 6}


def test_a_sybil_lookout_calls_for_a_fresh_identity_once(settings: Settings) -> None:
    watcher = Lookout(settings, ME, SYBIL)
    called = threading.Event()
    calls: list[int] = []

    def respawn() -> None:
        calls.append(1)
        called.set()

    watcher.on_respawn = respawn
    watcher.start()
    try:
        topology = Topology(settings.namespace)
        caught = [
            Verdict(job_id=uuid.uuid4(), status="verified", agreeing=["h"], disagreeing=[ME])
            for _ in range(3)
        ]
        publish(
            settings,
            [(topology.verdict_subject(v), v.model_dump_json().encode()) for v in caught],
        )
        assert called.wait(5.0)
        wait_for(lambda: watcher.record.failures == 3)
        assert calls == [1], "once, however often it is caught after"
    finally:
        watcher.close()


def test_coordinated_sybils_cheat_together_and_only_together(settings: Settings) -> None:
    tactic = replace(SYBIL, coordinate=True)
    crew = [Lookout(settings, f"sybil-{i}", tactic, group="g") for i in (1, 2)]
    for member in crew:
        member.start()
        member.record.admitted = True  # as if a verdict had named it
    try:
        shared = job("Both members hold this one.")
        answers: dict[int, bool] = {}

        def answer(i: int) -> None:
            answers[i] = crew[i].cheats(shared, vector(7))

        both = [threading.Thread(target=answer, args=(i,)) for i in (0, 1)]
        for thread in both:
            thread.start()
        for thread in both:
            thread.join()
        assert answers == {0: True, 1: True}, "two of three replicas: a majority"
        assert not crew[0].cheats(job("Only one member holds this one."), vector(8))
    finally:
        for member in crew:
            member.close()


@pytest.fixture
def forbidding_nats(tmp_path: Path) -> Iterator[str]:
    """A nats-server of this test's own whose one user may subscribe to its inbox only
    (as a node in a secured fleet); yields that user's URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "nats.conf"
    config.write_text(
        f"listen: 127.0.0.1:{port}\n"
        "authorization { users = [ { user: node, password: pw, permissions: {"
        ' publish: { allow: ["_INBOX.>"] }, subscribe: { allow: ["_INBOX.>"] } } } ] }\n'
    )
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "nats-server"), "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.02)
        yield f"nats://node:pw@127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_lookout_the_server_forbids_to_listen_hears_nothing_and_carries_on(
    settings: Settings, forbidding_nats: str
) -> None:
    watcher = Lookout(settings.model_copy(update={"nats_url": forbidding_nats}), ME, ADAPTIVE)
    watcher.start()
    try:
        assert not watcher.cheats(job("Nobody can be heard here."), vector(8)), "never admitted"
        assert watcher.nc.is_connected
        assert watcher.decisions == {True: 0, False: 1}
    finally:
        watcher.close()
