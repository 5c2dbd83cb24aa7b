"""The node's NATS bridge (a loop on a thread for Celery's threads) on the real JetStream,
and the node service publishing through it, honest or faulty (slow, colluding, crashing).

The bridge's methods block their caller, as Celery task threads expect; the tests call
them through `asyncio.to_thread` so that their own subscribers keep receiving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from numpy.typing import NDArray

from cortensor.adapters import jetstream
from cortensor.adapters.topology import Topology
from cortensor.protocol.comparators.embed import agree
from cortensor.protocol.signing import result_msg_id, signature_of, verify
from cortensor.schemas import (
    Assignment,
    Classification,
    InferenceResult,
    LabelScore,
    NodeHeartbeat,
    utcnow,
)
from cortensor.services.node.bridge import NatsBridge
from cortensor.services.node.faults import CRASH_EXIT_CODE, SLOW_MARGIN_S, Fault
from cortensor.services.node.service import NodeIdentity, NodeService
from cortensor.settings import Settings
from tests.conftest import eventually, make_settings
from tests.node_keys import key_of, public_key_of

pytestmark = pytest.mark.nats


@pytest.fixture(scope="module")
async def settings() -> AsyncIterator[Settings]:
    """A namespace of this module's own with its JetStream streams (RabbitMQ not needed)."""
    settings = make_settings()
    topology = Topology(settings.namespace)
    nc = await jetstream.connect(settings.nats_url, name="test-bridge-setup")
    await jetstream.apply_streams(nc.jetstream(), topology)
    yield settings
    js = nc.jetstream()
    for stream in topology.streams:
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(stream.name)
    await nc.drain()


@pytest.fixture(scope="module")
def topology(settings: Settings) -> Topology:
    return Topology(settings.namespace)


@pytest.fixture
async def nc(settings: Settings) -> AsyncIterator[NATS]:
    client = await jetstream.connect(settings.nats_url, name="test-bridge-observer")
    yield client
    await client.drain()


def release(bridge: NatsBridge) -> None:
    """Close the bridge; should its loop stay open, close it here, so that the leak is
    reported by test_close_releases_the_event_loop rather than by whichever test the
    garbage collector happens to run in."""
    bridge.close()
    loop = bridge._loop
    if not loop.is_running() and not loop.is_closed():
        loop.close()


@pytest.fixture
def bridge(settings: Settings) -> Iterator[NatsBridge]:
    bridge = NatsBridge(settings, name=f"test-node-{uuid.uuid4().hex[:6]}")
    bridge.start()
    yield bridge
    release(bridge)


def nats_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "nats"}


async def test_publish_durably_stores_a_batch_each_once(
    bridge: NatsBridge, nc: NATS, topology: Topology
) -> None:
    batch = [
        (
            topology.results_subject(str(uuid.uuid4()), node_id="n1"),
            f'{{"n": {i}}}'.encode(),
            str(uuid.uuid4()),
            {"Cortensor-Signature": f"sig{i}"},
        )
        for i in range(3)
    ]

    await asyncio.to_thread(bridge.publish_durably, batch + batch[:1], within=5)

    js = nc.jetstream()
    for subject, payload, _, headers in batch:
        info = await js.stream_info(topology.results_stream, subjects_filter=subject)
        assert info.state.subjects == {subject: 1}
        stored = await js.get_last_msg(topology.results_stream, subject)
        assert stored.data == payload
        assert stored.headers is not None
        assert stored.headers["Cortensor-Signature"] == headers["Cortensor-Signature"]


async def test_publish_durably_stores_a_result_once(
    bridge: NatsBridge, nc: NATS, topology: Topology
) -> None:
    subject = topology.results_subject(str(uuid.uuid4()), node_id="n1")
    msg_id = f"result-{uuid.uuid4()}"

    # A retried task publishes the same result again under the same id.
    for _ in range(2):
        await asyncio.to_thread(
            bridge.publish_durably, [(subject, b'{"result": 1}', msg_id, {})], within=5
        )

    js = nc.jetstream()
    info = await js.stream_info(topology.results_stream, subjects_filter=subject)
    assert info.state.subjects == {subject: 1}
    stored = await js.get_last_msg(topology.results_stream, subject)
    assert stored.data == b'{"result": 1}'
    assert stored.headers is not None
    assert stored.headers[jetstream.MSG_ID_HEADER] == msg_id


async def test_heartbeats_go_out_at_their_interval_until_the_last_words(
    bridge: NatsBridge, nc: NATS, topology: Topology
) -> None:
    node = f"node-{uuid.uuid4().hex[:6]}"
    subject = topology.heartbeat_subject(node)
    received: list[bytes] = []
    counter = iter(range(1_000_000))
    three, last_words = asyncio.Event(), asyncio.Event()

    async def collect(msg: Msg) -> None:
        received.append(msg.data)
        if len(received) >= 3:
            three.set()
        if msg.data == b"draining":
            last_words.set()

    sub = await nc.subscribe(subject, cb=collect)
    await nc.flush()
    await asyncio.to_thread(
        bridge.start_heartbeats, subject, lambda: (b"beat %d" % next(counter), {}), 0.05
    )

    async with asyncio.timeout(1):
        await three.wait()
    await asyncio.to_thread(bridge.stop_heartbeats, (subject, (b"draining", {})))
    async with asyncio.timeout(1):
        await last_words.wait()
    stopped_at = len(received)
    await asyncio.sleep(0.2)
    await sub.unsubscribe()

    beats = received[:-1]
    assert beats == [b"beat %d" % i for i in range(len(beats))], "in order, none lost"
    assert len(beats) >= 3
    assert received[-1] == b"draining"
    assert len(received) == stopped_at, "no heartbeat after the last words"


async def test_a_failing_heartbeat_does_not_end_the_heartbeats(
    bridge: NatsBridge, nc: NATS, topology: Topology
) -> None:
    subject = topology.heartbeat_subject(f"node-{uuid.uuid4().hex[:6]}")
    calls = iter(range(1_000_000))

    def make() -> tuple[bytes, dict[str, str]]:
        n = next(calls)
        if n == 1:
            raise RuntimeError("the node could not describe itself this time")
        return b"beat %d" % n, {}

    sub = await nc.subscribe(subject)
    await nc.flush()
    await asyncio.to_thread(bridge.start_heartbeats, subject, make, 0.02)

    got = [(await sub.next_msg(timeout=1)).data for _ in range(3)]
    await asyncio.to_thread(bridge.stop_heartbeats)
    await sub.unsubscribe()

    assert got == [b"beat 0", b"beat 2", b"beat 3"]


def test_close_ends_the_thread_and_the_connection(settings: Settings) -> None:
    before = nats_threads()
    bridge = NatsBridge(settings, name="test-node-close")
    bridge.start()
    [thread] = nats_threads() - before
    assert thread.is_alive()
    assert bridge.nc.is_connected

    bridge.stop_heartbeats()  # without heartbeats started, it is a no-op
    bridge.close()

    assert not thread.is_alive()
    assert bridge.nc.is_closed
    bridge.close()  # a second close is harmless
    bridge.stop_heartbeats(("x", (b"too late", {})))  # and so is stopping after close
    release(bridge)


def test_close_releases_the_event_loop(settings: Settings) -> None:
    bridge = NatsBridge(settings, name="test-node-leak")
    bridge.start()

    bridge.close()

    loop = bridge._loop
    closed = loop.is_closed()
    if not closed:
        loop.close()  # so that the leak surfaces here, not as a warning in a later test
    assert closed, (
        "NatsBridge.close() must close its event loop after the thread ends, or the loop"
        " and its self-pipe sockets leak (ResourceWarning 'unclosed event loop')"
    )


def test_a_bridge_that_was_never_started_says_so(settings: Settings) -> None:
    bridge = NatsBridge(settings, name="test-node-unstarted")

    with pytest.raises(RuntimeError, match=r"start\(\) was not called"):
        _ = bridge.nc
    bridge.close()  # closing what never started is harmless
    release(bridge)


class CountingEmbedder:
    """A stand-in model: the vector of a text is fixed by its length."""

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        vectors = np.zeros((len(texts), 8), dtype=np.float32)
        for i, text in enumerate(texts):
            vectors[i, len(text) % 8] = 1.0
        return vectors


class FirstLetterClassifier:
    """A stand-in classifier: a text's label is its first letter."""

    labels = ("a", "b")

    def classify(self, texts: Sequence[str], top_k: int) -> list[Classification]:
        return [
            Classification(label=t[0], score=1.0, top=[LabelScore(label=t[0], score=1.0)])
            for t in texts
        ]


async def test_a_node_runs_a_batch_and_drops_what_it_must_not_run(
    settings: Settings, bridge: NatsBridge, nc: NATS, topology: Topology
) -> None:
    identity = NodeIdentity(
        node_id="batch-node",
        hw_class="cpu-int8",
        models=("all-MiniLM-L6-v2", "rag-intent-classifier"),
        tasks=("embed", "classify"),
    )
    runtimes = {
        "all-MiniLM-L6-v2": CountingEmbedder(),
        "rag-intent-classifier": FirstLetterClassifier(),
    }
    service = NodeService(settings, identity, runtimes, bridge=bridge, key=key_of("batch-node"))

    def assignment(**overrides: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "job_id": uuid.uuid4(),
            "node_id": identity.node_id,
            "task": "embed",
            "model": "all-MiniLM-L6-v2",
            "inputs": ["abc", "hello"],
            "hw_class": identity.hw_class,
            "deadline_at": utcnow() + timedelta(seconds=30),
        } | overrides
        return Assignment(**fields).model_dump(mode="json")

    good = [assignment(), assignment(inputs=["x"])]
    classify = assignment(task="classify", model="rag-intent-classifier", inputs=["ab", "ba"])
    batch = [
        *good,
        classify,
        assignment(deadline_at=utcnow() - timedelta(seconds=1)),
        assignment(node_id="someone-else"),
        assignment(task="transcribe", model="whisper-base", inputs=[], audio="UklGRg=="),
        {"not": "an assignment"},
    ]

    summary = await asyncio.to_thread(service.handle, batch)

    assert summary == "done=3 expired=1 malformed=1 misrouted=1 unserved=1"
    js = nc.jetstream()
    for payload in good:
        stored = await js.get_last_msg(
            topology.results_stream,
            topology.results_subject(payload["job_id"], node_id=identity.node_id),
        )
        signature = signature_of(stored.headers)
        assert signature is not None
        assert verify(public_key_of(identity.node_id), stored.data, signature)
        assert stored.headers is not None
        assert stored.headers[jetstream.MSG_ID_HEADER] == result_msg_id(signature)
        result = InferenceResult.model_validate_json(stored.data)
        assert str(result.assignment_id) == payload["assignment_id"]
        assert result.node_id == identity.node_id
        assert result.precision == "int8"
        expected = CountingEmbedder().embed(payload["inputs"]).tolist()
        assert result.embeddings == expected
    stored = await js.get_last_msg(
        topology.results_stream,
        topology.results_subject(classify["job_id"], node_id=identity.node_id),
    )
    labels = InferenceResult.model_validate_json(stored.data)
    assert labels.task == "classify"
    assert [c.label for c in labels.classes or []] == ["a", "b"]
    assert labels.embeddings is None
    beat = json.loads(service.heartbeat())
    assert beat["processed"] == 3
    assert beat["models"] == ["all-MiniLM-L6-v2", "rag-intent-classifier"]


EMBEDDER = "all-MiniLM-L6-v2"


def embedding_node(
    settings: Settings, bridge: NatsBridge, node_id: str, fault: Fault | None
) -> NodeService:
    identity = NodeIdentity(
        node_id=node_id, hw_class="cpu-int8", models=(EMBEDDER,), tasks=("embed",)
    )
    return NodeService(
        settings,
        identity,
        {EMBEDDER: CountingEmbedder()},
        fault=fault,
        bridge=bridge,
        key=key_of(node_id),
    )


def embed_assignment(node_id: str, deadline_s: float, **fields: Any) -> dict[str, Any]:
    return Assignment(
        **{
            "job_id": uuid.uuid4(),
            "node_id": node_id,
            "task": "embed",
            "model": EMBEDDER,
            "inputs": ["abc", "hello"],
            "hw_class": "cpu-int8",
            "deadline_at": utcnow() + timedelta(seconds=deadline_s),
        }
        | fields
    ).model_dump(mode="json")


def slow_fault(pattern: list[bool]) -> Fault:
    """A slow fault at rate 0.5 whose first draws hold the jobs of `pattern`."""
    for seed in range(1000):
        probe = Fault("slow", 0.5, seed=seed)
        if [probe.delays() for _ in pattern] == pattern:
            return Fault("slow", 0.5, seed=seed)
    raise AssertionError("no seed found")


async def test_a_slow_node_answers_after_the_deadline(
    settings: Settings, bridge: NatsBridge, nc: NATS, topology: Topology
) -> None:
    node = f"slow-{uuid.uuid4().hex[:6]}"
    service = embedding_node(settings, bridge, node, slow_fault([True, False]))
    held, on_time = embed_assignment(node, 1.0), embed_assignment(node, 1.0)
    arrived: dict[str, datetime] = {}

    async def note(msg: Msg) -> None:
        arrived[InferenceResult.model_validate_json(msg.data).job_id.hex] = utcnow()

    sub = await nc.subscribe(topology.results_subject("*", node_id=node), cb=note)
    await nc.flush()
    started = time.monotonic()
    summary = await asyncio.to_thread(service.handle, [held, on_time])
    took = time.monotonic() - started
    await eventually(lambda: len(arrived) == 2, what="both results heard")
    await sub.unsubscribe()

    assert summary == "done=2"
    deadline = datetime.fromisoformat(held["deadline_at"])
    assert arrived[uuid.UUID(on_time["job_id"]).hex] < deadline, "the other job is on time"
    late = arrived[uuid.UUID(held["job_id"]).hex]
    assert late > deadline, "published after the deadline"
    assert late - deadline < timedelta(seconds=SLOW_MARGIN_S + 1.0), "and not much later"
    assert took < 1.0 + SLOW_MARGIN_S + 1.0
    stored = await nc.jetstream().get_last_msg(
        topology.results_stream, topology.results_subject(held["job_id"], node_id=node)
    )
    result = InferenceResult.model_validate_json(stored.data)
    assert result.embeddings == CountingEmbedder().embed(held["inputs"]).tolist(), "true, late"


async def test_colluding_nodes_publish_the_same_wrong_answer(
    settings: Settings, bridge: NatsBridge, nc: NATS, topology: Topology
) -> None:
    # Each replica under a job id of its own, to read each back; the inputs are shared.
    nodes = {
        "colluder-1": Fault("colluding", group="cartel", seed=1),
        "colluder-2": Fault("colluding", group="cartel", seed=2),
        "outsider": Fault("colluding", group="others", seed=1),
        "honest": None,
    }
    stored: dict[str, list[list[float]]] = {}
    for node, fault in nodes.items():
        payload = embed_assignment(node, 30.0, inputs=["a", "bb", "ccc", "dddd"])
        summary = await asyncio.to_thread(
            embedding_node(settings, bridge, node, fault).handle, [payload]
        )
        assert summary == "done=1"
        msg = await nc.jetstream().get_last_msg(
            topology.results_stream, topology.results_subject(payload["job_id"], node_id=node)
        )
        stored[node] = InferenceResult.model_validate_json(msg.data).embeddings or []

    assert stored["colluder-1"] == stored["colluder-2"]
    assert agree(stored["colluder-1"], "int8", stored["colluder-2"], "fp32")
    for a, b in [("colluder-1", "honest"), ("colluder-1", "outsider"), ("outsider", "honest")]:
        assert not agree(stored[a], "int8", stored[b], "int8"), (a, b)


CRASHING_NODE = """
import json, sys
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cortensor.services.node.bridge import NatsBridge
from cortensor.services.node.faults import Fault
from cortensor.services.node.service import NodeIdentity, NodeService
from cortensor.settings import Settings

class Embedder:
    def embed(self, texts):
        print("computing", flush=True)
        return np.ones((len(texts), 8), dtype=np.float32)

identity = NodeIdentity(
    node_id=sys.argv[1], hw_class="cpu-int8", models=("all-MiniLM-L6-v2",), tasks=("embed",)
)
settings = Settings()
service = NodeService(
    settings,
    identity,
    {"all-MiniLM-L6-v2": Embedder()},
    fault=Fault("crash", 1.0),
    bridge=NatsBridge(settings, name="crashing node"),
    key=Ed25519PrivateKey.generate(),
)
service.start()
service.announce()
sys.stdin.readline()  # the test heard a few heartbeats: the node is in the fleet
print(service.handle([json.loads(sys.argv[2])]), flush=True)
service.drain()
service.close()
"""


async def test_a_crashing_node_dies_mid_task_without_publishing(
    settings: Settings, nc: NATS, topology: Topology
) -> None:
    node = f"crash-{uuid.uuid4().hex[:6]}"
    payload = embed_assignment(node, 30.0)
    beats: list[NodeHeartbeat] = []

    async def note(msg: Msg) -> None:
        beats.append(NodeHeartbeat.model_validate_json(msg.data))

    sub = await nc.subscribe(topology.heartbeat_subject(node), cb=note)
    await nc.flush()
    env = {
        **os.environ,
        "CORTENSOR_NAMESPACE": settings.namespace,
        "CORTENSOR_NATS_URL": settings.nats_url,
        "CORTENSOR_HEARTBEAT_INTERVAL_S": "0.1",
    }
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_NODE,
        node,
        json.dumps(payload),
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await eventually(lambda: len(beats) >= 2, what="two heartbeats from the node", within=60)
    async with asyncio.timeout(60):
        out, errors = await child.communicate(b"go\n")
    heard = len(beats)
    await asyncio.sleep(0.5)
    await sub.unsubscribe()

    assert child.returncode == CRASH_EXIT_CODE, errors.decode()
    said = out.decode().splitlines()
    assert said[0] == "computing", "it died after computing"
    assert not any(line.startswith("done=") for line in said), "before handle() returned"
    assert "crash fault" in out.decode() + errors.decode()
    with pytest.raises(NotFoundError):
        await nc.jetstream().get_last_msg(
            topology.results_stream, topology.results_subject(payload["job_id"], node_id=node)
        )
    assert heard >= 2, "it was in the fleet"
    assert len(beats) == heard, "no heartbeat after it died"
    assert all(b.status == "up" for b in beats), "no last words either"


async def test_a_node_signs_its_heartbeats_and_its_last_words(
    settings: Settings, bridge: NatsBridge, nc: NATS, topology: Topology
) -> None:
    node = f"signer-{uuid.uuid4().hex[:6]}"
    service = embedding_node(settings, bridge, node, None)
    heard: list[Msg] = []

    async def note(msg: Msg) -> None:
        heard.append(msg)

    sub = await nc.subscribe(topology.heartbeat_subject(node), cb=note)
    await nc.flush()
    await asyncio.to_thread(service.announce)
    await eventually(lambda: heard, what="a heartbeat")
    await asyncio.to_thread(service.drain)
    await eventually(
        lambda: any(NodeHeartbeat.model_validate_json(m.data).status == "draining" for m in heard),
        what="the last words",
    )
    await sub.unsubscribe()

    for msg in heard:
        signature = signature_of(msg.headers)
        assert signature is not None
        assert verify(public_key_of(node), msg.data, signature)
