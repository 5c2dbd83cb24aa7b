"""What ops/bench makes of its measurements: the CPU profile summed by library, and
each figure set beside its target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cortensor.catalog import EMBED_MODEL, WHISPER_BASE
from cortensor.tools.bench import targets
from cortensor.tools.profile import library, summarize


def test_a_stack_counts_for_the_innermost_library_it_names(tmp_path: Path) -> None:
    raw = tmp_path / "guard.txt"
    raw.write_text(
        "run (cortensor/services/guard/service.py:1);_do_execute (asyncpg/connection.py:2) 6\n"
        "run (cortensor/services/guard/service.py:1);verify (cortensor/protocol/signing.py:5) 3\n"
        "run (asyncio/base_events.py:1);select (selectors.py:468) 90\n"
        "garbage line\n"
        "main (app.py:1) 1\n"
    )
    summary = summarize(raw)
    assert (summary["samples"], summary["waiting"]) == (10, 90)
    assert summary["share_by_library"] == {"postgresql": 0.6, "cortensor": 0.3, "other": 0.1}
    assert summary["top_functions"][0] == {
        "function": "_do_execute (asyncpg/connection.py:2)",
        "share": 0.6,
    }
    assert library("poll (kombu/utils/eventio.py:83)") == "amqp"
    assert summarize(tmp_path / "guard.txt", top=1)["top_functions"][0]["share"] == 0.6


def _run(k: Any, p50: float, p99: float, rate: float, cpu: float) -> dict[str, Any]:
    return {
        "redundancy": k,
        "latency_ms": {"p50": p50, "p99": p99},
        "throughput": {
            "jobs_per_s": rate,
            "cpu_ms_per_job": {"total": cpu},
            "replicas_per_job": 1.2,
        },
    }


def test_each_figure_is_set_beside_its_target() -> None:
    report = {
        "direct_int8_per_s": {"single_2_threads": 600.0},
        "pipeline": {
            "runs": [
                _run(1, 10.0, 14.0, 330.0, 6.0),
                _run(3, 14.0, 25.0, 120.0, 11.0),
                _run("auto", 11.0, 16.0, 250.0, 7.0),
            ]
        },
        "scale": {
            "routing": {"redundancy_1": {"p99_ms": 0.8}, "redundancy_3": {"p99_ms": 1.5}},
            "guard": {
                "redundancy_1": {"results_per_s": 2500.0},
                "redundancy_3": {"results_per_s": 1900.0},
            },
            "node_memory": [
                {"models": EMBED_MODEL, "rss_mb_ready": 240.0, "rss_mb_after_jobs": 250.0},
                {"models": WHISPER_BASE, "rss_mb_ready": 520.0, "rss_mb_after_jobs": 480.0},
            ],
        },
        "split": {"two_vs_one": 0.54},
    }
    got = targets(report)
    assert got["k1_throughput_vs_direct_2_threads"] == {
        "value": 0.55,
        "target": ">= 0.5",
        "met": True,
    }
    assert got["k1_cpu_ms_per_job"]["met"] is False
    assert (got["k3_p50_ms"]["met"], got["k3_p99_ms"]["met"]) == (True, False)
    assert got["k3_cpu_ms_per_job"]["met"] is True
    assert got["auto"] == {"replicas_per_job": 1.2, "jobs_per_s": 250.0}
    assert got["routing_10000_nodes_p99_ms"] == {"value": 1.5, "target": "<= 1.0", "met": False}
    assert got["guard_results_per_s"]["value"] == 1900.0
    assert got[f"node_rss_mb_{EMBED_MODEL}"]["met"] is True
    assert got[f"node_rss_mb_{WHISPER_BASE}"]["met"] is False
    assert got["split_two_vs_one"]["met"] is True
    assert targets({}) == {}
