"""Which probe a node gets (never an input it has seen), and the job that carries it:
identical in form to a real job's replica."""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from cortensor.protocol.placement import NodeView
from cortensor.protocol.planning import Timing
from cortensor.protocol.probing import DRAW_TRIES, PoolProbe, Probe, ProbePool, draw, probe_job
from cortensor.protocol.units import assignments_for, whole_job
from cortensor.schemas import JobRequest
from cortensor.services.router.probes import ProbeSender
from tests.conftest import make_settings

EMBED = "all-MiniLM-L6-v2"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
PREPARED = [
    Probe(task="embed", model=EMBED, inputs=["a", "b"], reference=[[1.0], [1.0]]),
    Probe(
        task="transcribe",
        model="whisper-base",
        audio="UklGRg==",
        language="en",
        reference={"text": "hi", "language": "en", "duration_s": 2.5, "segments": []},
    ),
]


def node(
    node_id: str = "n1", trust: str = "active", models: frozenset[str] = frozenset({EMBED})
) -> NodeView:
    return NodeView(node_id, "cpu-int8", models, last_seen=0.0, trust=trust)


def traffic(key: str, holders: set[str], model: str = EMBED) -> PoolProbe:
    return PoolProbe(
        key=key,
        task="embed",
        model=model,
        inputs=(f"text of {key}",),
        audio=None,
        options={},
        reference=[[0.5]],
        precision="int8",
        deadline_s=12.0,
        holders=frozenset(holders),
    )


NODES = [f"n{i}" for i in range(5)]


@settings(max_examples=150, deadline=None)
@given(
    held=st.lists(st.sets(st.sampled_from(NODES), max_size=4), min_size=1, max_size=6),
    steps=st.lists(st.one_of(st.sampled_from(NODES), st.just("refresh")), min_size=1, max_size=60),
    seed=st.integers(0, 2**32),
)
def test_a_node_never_gets_an_input_it_has_seen(
    held: list[set[str]], steps: list[str], seed: int
) -> None:
    rng = random.Random(seed)
    probes = [traffic(f"job{i}", h) for i, h in enumerate(held)]
    pool = ProbePool(PREPARED)
    pool.refresh(probes, {})
    seen = {n: {p.key for p in probes if n in p.holders} for n in NODES}
    for step in steps:
        if step == "refresh":
            # A read of the ledger that began before the last probes were written: it
            # does not know of them, and the pool must not forget them.
            pool.refresh(probes, {})
            continue
        probe = pool.pick(node(step), rng)
        if probe is None:
            assert {p.key for p in probes} <= seen[step]
            continue
        assert probe.key not in seen[step]
        assert not probe.key.startswith("prepared:")  # the model has traffic
        seen[step].add(probe.key)
        pool.sent(probe, step)


def test_probes_made_from_a_source_count_as_held_once_the_ledger_says_so() -> None:
    pool = ProbePool()
    pool.refresh([traffic("job1", {"n1", "n2"})], {"job1": ["n3"]})
    assert pool.pick(node("n3"), random.Random(0)) is None
    assert pool.pick(node("n4"), random.Random(0)) is not None


def test_prepared_probes_only_start_a_model_without_traffic() -> None:
    pool = ProbePool(PREPARED)
    first = pool.pick(node(), random.Random(0))
    assert first is not None
    assert first.key.startswith("prepared:")
    pool.refresh([traffic("job1", {"n9"})], {})
    assert [p.key for p in pool.choices(node())] == ["job1"]
    # A node that held every traffic probe of the model waits; it is not sent a
    # prepared one, which anyone can read.
    pool.refresh([traffic("job1", {"n1"})], {})
    assert pool.pick(node(), random.Random(0)) is None
    # Another model without traffic still starts from its prepared probes.
    speech = pool.pick(node(models=frozenset({"whisper-base"})), random.Random(0))
    assert speech is not None
    assert speech.key.startswith("prepared:")


def test_a_probe_agreed_on_at_the_node_s_precision_is_preferred() -> None:
    pool = ProbePool()
    fp32 = replace(traffic("fp32-only", set()), agreed_at=frozenset({"fp32"}))
    mixed = replace(traffic("mixed", set()), agreed_at=frozenset({"fp32", "int8"}))
    pool.refresh([fp32, mixed], {})
    int8_node = node("n1")  # cpu-int8
    fp32_node = NodeView("n2", "cpu-fp32", frozenset({EMBED}), last_seen=0.0)
    assert [p.key for p in pool.choices(int8_node)] == ["mixed"]
    assert sorted(p.key for p in pool.choices(fp32_node)) == ["fp32-only", "mixed"]
    # Once it has seen those, the others are still its to get.
    pool.sent(mixed, "n1")
    assert [p.key for p in pool.choices(int8_node)] == ["fp32-only"]


def test_a_node_serving_no_probed_model_gets_none() -> None:
    pool = ProbePool(PREPARED)
    assert pool.pick(node(models=frozenset({"rag-intent-classifier"})), random.Random(0)) is None


def test_a_prepared_speech_probe_keeps_its_audio_and_span() -> None:
    probe = PoolProbe.prepared(PREPARED[1])
    assert probe.audio == b"RIFF"
    assert dict(probe.options) == {"language": "en", "start_s": 0.0, "end_s": 2.5}
    job = probe_job(probe, node(models=frozenset({"whisper-base"})), uuid.uuid4(), NOW)
    # The deadline counts the audio's length, as for a real transcribe job.
    assert Timing(10.0, 0.5).deadline(job, NOW) == NOW + timedelta(seconds=11.25)


def test_a_probe_replica_is_identical_in_form_to_a_real_one() -> None:
    request = JobRequest(task="embed", model=EMBED, inputs=["text of job1"], deadline_s=12.0)
    real = whole_job(request, NOW + timedelta(seconds=request.deadline_s))
    timing = Timing(10.0, 0.5)
    [real_replica] = assignments_for(real, [("n1", "cpu-int8")], timing.deadline(real, NOW))
    job = probe_job(traffic("job1", set()), node(), uuid.uuid4(), NOW)
    [probe_replica] = assignments_for(job, [("n1", "cpu-int8")], timing.deadline(job, NOW))
    a = real_replica.model_dump(mode="json")
    b = probe_replica.model_dump(mode="json")
    different = {k for k in a if a[k] != b[k]}
    assert different == {"assignment_id", "job_id", "created_at"}
    assert probe_replica.attempt == 1
    assert uuid.UUID(b["job_id"]).version == 4
    # What only the ledger keeps: the reference, its precision and the source.
    assert job.params["reference"] == [[0.5]]
    assert job.params["reference_precision"] == "int8"
    assert job.params["source"] == "job1"
    assert job.probe


def test_the_sender_probes_due_nodes_of_every_trust_state_with_one_replica_each() -> None:
    sender = ProbeSender(
        make_settings(probe_interval_s=1.0, active_probe_interval_s=1.0, node_ttl_s=1e9),
        random.Random(4),
    )
    sender.pool = ProbePool(PREPARED)
    nodes = [node("n1", "probation"), node("n2", "active"), node("n3", "quarantined")]
    assert sender.due(nodes, 0.0) == []  # each first probe is a random gap away
    opened = []
    for t in range(1, 200):
        opened += sender.due(nodes, float(t))
    probed = {new.assignments[0].node_id for new in opened}
    assert probed == {"n1", "n2", "n3"}
    for new in opened:
        assert new.status == "running"
        assert len(new.assignments) == 1
        assert new.job.probe
        assert new.assignments[0].deadline_at <= new.job.deadline_at
    # There is one prepared embed probe: each node gets it once, then waits for traffic.
    assert len(opened) == 3


# -- draw: the choice rule the pool and the simulation share -------------------------------


@given(
    allowed=st.lists(st.booleans(), max_size=40),
    seed=st.integers(0, 2**32),
    tries=st.integers(0, 2 * DRAW_TRIES),
)
def test_draw_finds_an_admissible_index_whenever_there_is_one(
    allowed: list[bool], seed: int, tries: int
) -> None:
    got = draw(len(allowed), allowed.__getitem__, random.Random(seed), tries=tries)
    if any(allowed):
        assert got is not None
        assert allowed[got]
    else:
        assert got is None


def test_draw_is_uniform_among_the_admissible_indices() -> None:
    # One index in ten admissible: most draws go through the rejection tries, some
    # through the listing; either way each admissible index is as likely.
    allowed = [i % 10 == 3 for i in range(100)]
    rng = random.Random(7)
    counts = dict.fromkeys((i for i, ok in enumerate(allowed) if ok), 0)
    rounds = 20_000
    for _ in range(rounds):
        got = draw(len(allowed), allowed.__getitem__, rng)
        assert got is not None
        counts[got] += 1
    expected = rounds / len(counts)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 27.9  # chi-squared, 9 degrees of freedom, p = 0.001


def test_a_pool_draw_reads_the_index_not_the_whole_pool() -> None:
    looked: list[int] = []

    def admissible(i: int) -> bool:
        looked.append(i)
        return True

    assert draw(5000, admissible, random.Random(0)) is not None
    assert len(looked) == 1
