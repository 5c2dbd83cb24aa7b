"""Which nodes get known-answer probes, how often, and what a probe job carries."""

from __future__ import annotations

import random

import pytest

from cortensor.protocol.placement import NodeView
from cortensor.protocol.probing import Probe, Prober, ProbeSet
from cortensor.settings import Settings

SETTINGS = Settings(probe_interval_s=1.0, quarantine_probe_interval_s=5.0, node_ttl_s=5.0)
PROBES = ProbeSet(
    source="test",
    probes=[
        Probe(task="embed", model="all-MiniLM-L6-v2", inputs=["a", "b"], reference=[[1.0], [1.0]]),
        Probe(
            task="transcribe",
            model="whisper-base",
            audio="UklGRg==",
            language="en",
            reference={"text": "hi", "language": "en", "duration_s": 2.5, "segments": []},
        ),
    ],
)


def node(trust: str, models: frozenset[str] = frozenset({"all-MiniLM-L6-v2"})) -> NodeView:
    return NodeView("n1", "cpu-int8", models, last_seen=100.0, trust=trust)


def prober() -> Prober:
    p = Prober(SETTINGS, random.Random(1))
    p.probe_set = PROBES
    return p


@pytest.mark.parametrize(
    ("trust", "wait", "due"),
    [
        ("active", 100.0, False),
        ("probation", 0.5, False),
        ("probation", 1.0, True),
        ("quarantined", 1.0, False),
        ("quarantined", 5.0, True),
    ],
)
def test_nodes_not_trusted_are_probed_at_their_interval(trust: str, wait: float, due: bool) -> None:
    p = prober()
    assert p.due(node(trust), 100.0) is (trust != "active")
    p.sent("n1", 100.0)
    assert p.due(node(trust), 100.0 + wait) is due


def test_a_node_that_went_silent_is_not_probed() -> None:
    assert prober().due(node("probation"), 100.0 + SETTINGS.node_ttl_s + 1) is False


def test_a_probe_job_carries_its_reference_and_nothing_a_node_sees_marks_it() -> None:
    job = prober().job_for(node("probation"))
    assert job is not None
    assert (job.probe, job.redundancy, job.model, job.inputs) == (
        True,
        1,
        "all-MiniLM-L6-v2",
        ["a", "b"],
    )
    assert job.params["reference"] == [[1.0], [1.0]]
    assert job.params["reference_precision"] == "fp32"
    assert prober().job_for(node("probation")).job_id != job.job_id  # type: ignore[union-attr]


def test_a_speech_probe_gives_its_audio_length_for_the_deadline() -> None:
    job = prober().job_for(node("probation", frozenset({"whisper-base"})))
    assert job is not None
    assert job.audio == b"RIFF"
    assert (job.params["start_s"], job.params["end_s"], job.params["language"]) == (0.0, 2.5, "en")


def test_a_node_serving_no_probed_model_gets_none() -> None:
    assert prober().job_for(node("probation", frozenset({"rag-intent-classifier"}))) is None
