"""Reputation arithmetic over the append-only reputation events.

A node's score is the posterior mean of a Beta(1, 1) prior updated by its record:
(agreed + 1) / (agreed + disagreed + timed_out + 2). A new node starts at 0.5; every
agreement pulls it towards 1, every disagreement or missed deadline towards 0. The
ledger's SQL function `cortensor_score` computes the same number, so an admin's
report and the router's choice agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

EventKind = Literal["agreed", "disagreed", "timed_out"]
PRIOR_SCORE = 0.5


@dataclass(frozen=True, slots=True)
class Record:
    """A node's counts of reputation events."""

    agreed: int = 0
    disagreed: int = 0
    timed_out: int = 0

    @property
    def observations(self) -> int:
        """How many events the score rests on."""
        return self.agreed + self.disagreed + self.timed_out


def score(record: Record) -> float:
    """The node's reputation in (0, 1)."""
    return (record.agreed + 1.0) / (record.observations + 2.0)


def tally(events: Iterable[EventKind]) -> Record:
    """Count a sequence of event kinds into a record."""
    counts = {"agreed": 0, "disagreed": 0, "timed_out": 0}
    for kind in events:
        counts[kind] += 1
    return Record(**counts)
