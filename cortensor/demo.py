"""The demo: a fleet of three honest nodes and one dishonest one, and a batch of jobs."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cortensor.client import Client
from cortensor.fleet import Fleet
from cortensor.reports import console as make_console
from cortensor.reports import node_report, render_table
from cortensor.schemas import JobRequest, Verdict
from cortensor.settings import Settings

TEXTS = [
    "The network verifies every answer before a user sees it.",
    "Three nodes embed the same sentence; a guard compares them.",
    "A dishonest node returns random vectors and loses reputation.",
    "Reputation lives in PostgreSQL as append-only events.",
    "RabbitMQ carries jobs; NATS JetStream carries results.",
    "Quantized models run fast on ordinary CPUs.",
    "Paris is the capital of France.",
    "How do I reset my password?",
    "The weather tomorrow looks sunny with light wind.",
    "Machine learning models turn text into vectors.",
    "A strict majority decides what is true.",
    "Late replicas are re-routed to other nodes.",
]


async def _push(settings: Settings, jobs: list[JobRequest], console: Console) -> list[Verdict]:
    async with Client(settings) as client:
        with Progress(
            TextColumn("[bold]jobs"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task("jobs", total=len(jobs))

            async def one(job: JobRequest) -> Verdict:
                verdict = await client.run(job)
                progress.advance(bar)
                return verdict

            return list(await asyncio.gather(*(one(job) for job in jobs)))


def _results_table(jobs: list[JobRequest], verdicts: list[Verdict]) -> Table:
    table = Table(title="Verified results")
    for column in ("text", "status", "agreed", "disagreed", "embedding"):
        table.add_column(column)
    for job, verdict in zip(jobs, verdicts, strict=True):
        vector = (verdict.embeddings or [[]])[0]
        head = ", ".join(f"{x:+.3f}" for x in vector[:3])
        table.add_row(
            job.inputs[0][:48],
            verdict.status,
            ", ".join(verdict.agreeing) or "-",
            ", ".join(verdict.disagreeing) or "-",
            f"{len(vector)}-d [{head}, ...]" if vector else verdict.reason[:40],
        )
    return table


def run_demo(settings: Settings, *, jobs: int, redundancy: int, log_dir: Path) -> int:
    """Start the fleet, push `jobs` jobs, print results and the report; 0 if all verified."""
    console = make_console()
    host = socket.gethostname().split(".")[0]
    dishonest = f"{host}-dishonest-1"
    fleet = Fleet(
        settings,
        nodes=3,
        extra_nodes=[["--fault", "random", "--node-id", dishonest]],
        log_dir=log_dir,
    )
    console.print(
        f"starting the fleet: router, guard, 3 honest nodes and {dishonest} (logs: {log_dir})"
    )
    with fleet:
        nodes = fleet.wait_ready()
        console.print(f"nodes up: {', '.join(nodes)}")
        batch = [
            JobRequest(inputs=[TEXTS[i % len(TEXTS)]], redundancy=redundancy) for i in range(jobs)
        ]
        verdicts = asyncio.run(_push(settings, batch, console))
        console.print(_results_table(batch, verdicts))
        console.print(
            render_table("Node reputation (node_reputation_report)", node_report(settings))
        )
        console.print("stopping the fleet")
    verified = sum(v.status == "verified" for v in verdicts)
    console.print(f"{verified} of {jobs} jobs verified; fleet stopped")
    return 0 if verified == jobs else 1
