"""Pictures of the admin reports: `cortensor report NAME --plot PNG`.

Each drawable report has a `Chart`: which column runs along the x axis, which one is
drawn, as bars (one per node or class) or as a line over time. A report without one
(its rows are reasons in words) is refused with BadInput that names the ones that draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from cortensor.errors import BadInput

TRUST_COLOURS = {"active": "tab:green", "probation": "tab:orange", "quarantined": "tab:red"}
"""Bar colours of the nodes' trust states; anything else is grey."""


@dataclass(frozen=True, slots=True)
class Chart:
    """How to draw one report."""

    kind: Literal["bar", "line"]
    x: str
    y: str
    title: str
    ylabel: str
    colour_by: str | None = None
    """A column whose value picks each bar's colour (TRUST_COLOURS)."""
    ylim: tuple[float, float] | None = None


CHARTS = {
    "leaderboard": Chart(
        "bar", "node_id", "score", "Nodes by reputation score", "score", "trust", (0.0, 1.0)
    ),
    "node_reputation": Chart(
        "bar", "node_id", "score", "Reputation of every node", "score", ylim=(0.0, 1.0)
    ),
    "disagreement": Chart(
        "bar",
        "node_id",
        "disagreement_rate",
        "Disagreement rate per node",
        "disagreed / checked",
        "trust",
        (0.0, 1.0),
    ),
    "hw_classes": Chart(
        "bar",
        "hw_class",
        "agreement_rate",
        "Agreement rate per hardware class",
        "agreed / (agreed + disagreed)",
        ylim=(0.0, 1.0),
    ),
    "replicas": Chart(
        "line", "hour", "replicas_per_job", "Replicas per verified job, hour by hour", "replicas"
    ),
    "node_history": Chart(
        "line", "node_seq", "score", "A node's score, event by event", "score", ylim=(0.0, 1.0)
    ),
}
"""The reports that draw, by name (db/reports/NAME.sql)."""


def chart_of(name: str) -> Chart:
    """The chart of report `name`, or BadInput naming the reports that have one."""
    if name not in CHARTS:
        raise BadInput(
            f"report {name} cannot be drawn (its rows are not a series of numbers);"
            f" --plot draws {', '.join(sorted(CHARTS))}; use --json for the others"
        )
    return CHARTS[name]


def plot_report(name: str, rows: Sequence[dict[str, Any]], path: Path) -> Chart:
    """Draw report `name`'s rows into a PNG at `path`; returns the chart drawn. A report
    with no rows draws empty axes that say so."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    chart = chart_of(name)
    if rows and not {chart.x, chart.y} <= rows[0].keys():
        missing = sorted({chart.x, chart.y} - rows[0].keys())
        raise BadInput(f"report {name} lacks the column(s) {', '.join(missing)} to draw")
    drawn = [r for r in rows if r[chart.y] is not None]
    xs = [r[chart.x] for r in drawn]
    ys = [float(r[chart.y]) for r in drawn]
    fig = Figure(figsize=(max(6.0, min(24.0, 0.4 * len(xs) + 2)), 5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if chart.kind == "bar":
        colours = [
            TRUST_COLOURS.get(str(r.get(chart.colour_by)), "tab:grey")
            if chart.colour_by
            else "tab:blue"
            for r in drawn
        ]
        ax.bar([str(x) for x in xs], ys, color=colours)
        ax.tick_params(axis="x", labelrotation=60, labelsize="small")
        if chart.colour_by and drawn:
            seen = dict.fromkeys(str(r.get(chart.colour_by)) for r in drawn)
            handles = [Patch(color=TRUST_COLOURS.get(s, "tab:grey"), label=s) for s in seen]
            ax.legend(handles=handles, title=chart.colour_by, fontsize="small")
    else:
        ax.plot(xs, ys, marker="o")
        if xs and isinstance(xs[0], datetime):
            fig.autofmt_xdate()
    if chart.ylim is not None:
        ax.set_ylim(*chart.ylim)
    ax.set_title(chart.title if drawn else f"{chart.title} (no rows yet)")
    ax.set_xlabel(chart.x)
    ax.set_ylabel(chart.ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    return chart
