"""`cortensor top`'s frame is a pure function of its snapshot."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from cortensor.tools.top import NodeRow, Snapshot, render


def text_of(snapshot: Snapshot) -> str:
    console = Console(record=True, width=160, color_system=None)
    console.print(render(snapshot))
    return console.export_text()


def cells(line: str) -> list[str]:
    """A table row's cells (rich draws the column rules with │)."""
    return line.replace("│", " ").split()


def test_a_frame_shows_jobs_queues_and_nodes() -> None:
    snapshot = Snapshot(
        taken_at=datetime(2026, 1, 1, 12, tzinfo=UTC),
        namespace="prod",
        nodes=[
            NodeRow("gpu-1", "cuda-fp16", "active", 0.9712, 3, 41.5, 2, 1200, 4),
            NodeRow("gpu-2", "cuda-fp16", "probation", 0.5, 1, 2.0, None, None, 3),
            NodeRow("liar-1", "cpu-int8", "quarantined", 0.0841, 0, 0.0, 0, 80, None),
        ],
        jobs_per_s={"verified": 12.3, "failed": 0.1},
        router_queue=17,
    )
    text = text_of(snapshot)
    assert "namespace prod" in text
    lines = text.splitlines()
    [jobs] = [ln for ln in lines if "12.3" in ln]
    assert "0.1" in jobs  # failed per second
    assert "17" in jobs  # in the router's queue
    [cuda] = [ln for ln in lines if cells(ln)[:1] == ["cuda-fp16"]]
    assert cells(cuda)[1:] == ["2", "7", "4"]  # nodes, queued messages, awaited
    [cpu] = [ln for ln in lines if cells(ln)[:1] == ["cpu-int8"]]
    assert cells(cpu)[1:] == ["1", "-", "0"]  # its queue not read
    [gpu] = [ln for ln in lines if "gpu-1" in ln]
    assert cells(gpu) == ["gpu-1", "cuda-fp16", "active", "0.971", "2", "3", "4", "41.5"]
    [unheard] = [ln for ln in lines if "gpu-2" in ln]
    assert cells(unheard)[4] == "-"  # no heartbeat heard
    assert "quarantined" in text
    assert "not read" not in text


def test_sources_not_read_are_named_and_an_empty_fleet_still_draws() -> None:
    snapshot = Snapshot(
        taken_at=datetime(2026, 1, 1, tzinfo=UTC),
        namespace="empty",
        problems=["queues (ConnectionError)"],
    )
    text = text_of(snapshot)
    assert "Nodes (0)" in text
    assert "not read: queues (ConnectionError)" in text
    assert "verified" in text
