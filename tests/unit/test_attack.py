"""The pure parts of the attack measurement: its sentences, how a delivered result is
judged, and how a hostile node's decisions are read back from its log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import structlog

from cortensor.tools.attack import decisions, respawned, sentences, wrong


def test_sentences_are_distinct_and_repeatable() -> None:
    texts = sentences(500, seed=3)
    assert len(set(texts)) == 500
    assert texts == sentences(500, seed=3)
    assert texts != sentences(500, seed=4)


def test_a_result_is_wrong_outside_the_int8_to_fp32_tolerance() -> None:
    rng = np.random.default_rng(0)
    truth = rng.standard_normal(384).astype(np.float32)
    truth /= np.linalg.norm(truth)
    other = rng.standard_normal(384).astype(np.float32)
    other -= float(other @ truth) * truth
    other /= np.linalg.norm(other)
    assert not wrong([truth.tolist()], truth)
    assert not wrong([(0.96 * truth + 0.28 * other).tolist()], truth)
    assert wrong([(0.9 * truth + 0.436 * other).tolist()], truth)
    assert wrong([other.tolist()], truth)
    assert wrong(None, truth)


def test_decisions_are_read_back_from_the_node_log(tmp_path: Path) -> None:
    render = structlog.dev.ConsoleRenderer(colors=False)
    lines = [
        render(None, "info", {"event": "hostile decision", "cheat": c, "why": w, "streak": 0})
        for c, w in [
            (True, "alone: no peer answered within the window"),
            (False, "checked: a peer answered too"),
            (False, "probe: a prepared probe"),
            (True, "alone: no peer answered within the window"),
            (False, "earning trust (3 of 30)"),
            (False, "earning trust (4 of 30)"),
        ]
    ]
    log = tmp_path / "node.log"
    log.write_text("\n".join([*lines, "node starting fault=adaptive"]) + "\n")
    assert decisions(log) == {
        "cheated": 2,
        "honest: checked: a peer answered too": 1,
        "honest: earning trust": 2,
        "honest: probe: a prepared probe": 1,
    }
    assert decisions(tmp_path / "missing.log") == {}


def test_a_sybils_identities_are_its_first_and_those_it_took_after() -> None:
    names = ["sybil-1", "sybil-1-r1", "sybil-1-r2", "sybil-10", "sybil-2-r1", "vm-node-1"]
    assert respawned("sybil-1", names) == ["sybil-1", "sybil-1-r1", "sybil-1-r2"]
    assert respawned("sybil-2", names) == ["sybil-2-r1"]
    assert respawned("hostile", names) == []
