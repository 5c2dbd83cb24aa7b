"""The work a node holds, probes included, in the router's placement: a replica goes to a
node whose queue leaves it its whole time while one is left, and a probe holds its node
like any other replica (planning.Timing.fits, planning.Backlog, the ProbeSender)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from cortensor.protocol.placement import NodeView
from cortensor.protocol.planning import Backlog, Plan, Timing, plan
from cortensor.protocol.probing import Probe, ProbePool
from cortensor.protocol.replication import ESTABLISHED_STREAK
from cortensor.protocol.units import OpenJob
from cortensor.schemas import utcnow
from cortensor.services.router.probes import ProbeSender
from tests.conftest import make_settings

EMBED = "all-MiniLM-L6-v2"
WHISPER = "whisper-base"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
TIMING = Timing(assignment_s=10.0, per_audio_s=0.5)
SPEECH_S = 27.19
"""The demo's speech: a probe made from it holds a node for 0.5 s per second of audio."""
SPEECH_WORK_S = TIMING.work_s({"start_s": 0.0, "end_s": SPEECH_S})


def node(
    node_id: str, *, streak: int = ESTABLISHED_STREAK, trust: str = "active", inflight: int = 0
) -> NodeView:
    return NodeView(
        node_id=node_id,
        hw_class="cpu-int8",
        models=frozenset({EMBED, WHISPER}),
        last_seen=0.0,
        capacity=4,
        inflight=inflight,
        trust=trust,
        streaks={EMBED: streak, WHISPER: streak},
    )


def embed(*, deadline_s: float, redundancy: int = 1, now: datetime = NOW) -> OpenJob:
    return OpenJob(
        job_id=uuid.uuid4(),
        task="embed",
        model=EMBED,
        redundancy=redundancy,
        hw_class="any",
        inputs=["a text"],
        deadline_at=now + timedelta(seconds=deadline_s),
        taken=frozenset(),
    )


def planned(result: Plan | str) -> Plan:
    assert isinstance(result, Plan), result
    return result


def one_replica(
    pool: list[NodeView], seed: int, ahead: dict[str, float], *, now: datetime = NOW
) -> Plan:
    """The plan of the one replica of a 5 s embed job, on `pool` holding `ahead`."""
    return planned(
        plan(
            embed(deadline_s=5.0, now=now),
            1,
            pool=pool,
            rng=random.Random(seed),
            now=now,
            timing=TIMING,
            ahead=ahead,
        )
    )


# -- placement -------------------------------------------------------------------------------


@given(seed=st.integers(0, 2**32), busy_first=st.booleans(), newcomers=st.booleans())
def test_a_node_holding_a_transcription_is_not_chosen_for_an_embed_it_would_make_late(
    seed: int, busy_first: bool, newcomers: bool
) -> None:
    streak = 0 if newcomers else ESTABLISHED_STREAK
    busy, idle = node("busy", streak=streak), node("idle", streak=streak)
    pool = [busy, idle] if busy_first else [idle, busy]
    p = one_replica(pool, seed, {"busy": SPEECH_WORK_S})
    assert p.nodes == ["idle"]
    assert p.deadline_at == NOW + timedelta(seconds=5.0)


@given(
    ahead=st.lists(st.sampled_from([0.0, 0.5, 5.0, 13.6, 30.0, 120.0]), min_size=1, max_size=8),
    k=st.integers(1, 8),
    deadline_s=st.floats(1.0, 120.0),
    seed=st.integers(0, 2**32),
    temperature=st.sampled_from([0.0, 0.5, 1.0, 4.0]),
)
def test_nodes_whose_queue_leaves_the_replica_its_time_are_taken_first(
    ahead: list[float], k: int, deadline_s: float, seed: int, temperature: float
) -> None:
    pool = [node(f"n{i}") for i in range(len(ahead))]
    held = {f"n{i}": a for i, a in enumerate(ahead)}
    job = embed(deadline_s=deadline_s, redundancy=k)
    result = plan(
        job,
        k,
        pool=pool,
        rng=random.Random(seed),
        now=NOW,
        timing=TIMING,
        temperature=temperature,
        ahead=held,
    )
    if len(pool) < k:
        assert isinstance(result, str)
        return
    p = planned(result)
    fitting = {n for n, a in held.items() if TIMING.fits(job, NOW, a)}
    if len(fitting) >= k:
        assert set(p.nodes) <= fitting
    else:
        assert fitting <= set(p.nodes)  # the rest from the busy nodes, as before
    most = max(held[n] for n in p.nodes)
    assert p.deadline_at == min(NOW + timedelta(seconds=10.0 + most), job.deadline_at)


def test_a_busy_node_still_takes_a_replica_when_no_other_can() -> None:
    p = planned(
        plan(
            embed(deadline_s=30.0, redundancy=2),
            2,
            pool=[node("a"), node("b")],
            rng=random.Random(1),
            now=NOW,
            timing=TIMING,
            ahead={"a": SPEECH_WORK_S},
        )
    )
    assert sorted(p.nodes) == ["a", "b"]
    # Queued behind the transcription, the embed gets that work's time on top of its own.
    assert p.deadline_at == NOW + timedelta(seconds=10.0 + SPEECH_WORK_S)


def test_an_idle_newcomer_never_takes_the_lead_from_a_busy_established_node() -> None:
    # The newcomer rule comes before the queue: a Sybil cannot take the lead of a job by
    # keeping the established nodes busy with long audio of its own.
    pool = [node("est", streak=ESTABLISHED_STREAK), node("new", streak=0)]
    for seed in range(50):
        assert one_replica(pool, seed, {"est": SPEECH_WORK_S}).nodes == ["est"]


def test_an_idle_node_always_fits_and_a_late_reroute_prefers_idle_nodes() -> None:
    late = embed(deadline_s=3.0)
    assert TIMING.fits(late, NOW, 0.0)
    assert not TIMING.fits(late, NOW, 0.1)
    ample = embed(deadline_s=30.0)
    assert TIMING.fits(ample, NOW, 20.0)
    assert not TIMING.fits(ample, NOW, 20.5)


# -- probes hold their nodes -------------------------------------------------------------------

SPEECH_PROBE = Probe(
    task="transcribe",
    model=WHISPER,
    audio="UklGRg==",
    language="en",
    reference={"text": "hi", "language": "en", "duration_s": SPEECH_S, "segments": []},
)


def sender(backlog: Backlog, probe: Probe = SPEECH_PROBE) -> ProbeSender:
    s = ProbeSender(
        make_settings(probe_interval_s=1.0, active_probe_interval_s=1.0, node_ttl_s=1e9),
        random.Random(3),
        backlog,
    )
    s.pool = ProbePool([probe])
    return s


def probe_until_sent(probes: ProbeSender, nodes: list[NodeView], steps: int = 200) -> list[str]:
    for t in range(1, steps):
        opened = probes.due(nodes, float(t))
        if opened:
            return [new.assignments[0].node_id for new in opened]
    return []


def test_a_transcription_probe_counts_in_the_backlog_that_places_real_jobs() -> None:
    backlog = Backlog()
    probes = sender(backlog)
    busy, idle = node("busy"), node("idle")
    assert probe_until_sent(probes, [busy]) == ["busy"]
    now = utcnow()
    held = backlog.ahead(["busy", "idle"], now)
    assert held == {"busy": SPEECH_WORK_S}
    for seed in range(50):
        assert one_replica([busy, idle], seed, held, now=now).nodes == ["idle"]


def test_a_probe_s_deadline_counts_its_node_s_queue_as_a_real_replica_s_does() -> None:
    backlog = Backlog()
    backlog.add(["n1"], 12.0, utcnow() + timedelta(seconds=60))
    probes = sender(backlog)
    opened = []
    for t in range(1, 200):
        opened = probes.due([node("n1")], float(t))
        if opened:
            break
    [new] = opened
    [assignment] = new.assignments
    timing = probes.timing
    window = timing.timeout_s(new.job.params) + 12.0
    assert assignment.deadline_at == min(
        new.created_at + timedelta(seconds=window), new.job.deadline_at
    )
    assert assignment.deadline_at > new.created_at + timedelta(seconds=timing.timeout_s({}) + 12)


def test_a_node_that_gets_only_probes_gets_the_next_once_it_holds_nothing() -> None:
    for trust in ("probation", "quarantined"):
        probes = sender(Backlog())
        assert probe_until_sent(probes, [node("n1", trust=trust, inflight=1)]) == []
        # Still due: it gets its probe at once when it holds nothing.
        assert probes.due([node("n1", trust=trust)], 300.0) != []


def test_an_active_node_is_probed_busy_or_not() -> None:
    # Holding its probes back while it is busy would tell it that busy-time jobs are real.
    probes = sender(Backlog())
    assert probe_until_sent(probes, [node("n1", inflight=3)]) == ["n1"]
