"""The demo: a fleet of three honest nodes and one dishonest one, and a batch of jobs of
every task: embeddings, intent classification, and speech made with espeak-ng."""

from __future__ import annotations

import asyncio
import base64
import socket
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cortensor.client import Client
from cortensor.schemas import JobRequest, Verdict
from cortensor.settings import Settings
from cortensor.tools import speech
from cortensor.tools.fleet import Fleet
from cortensor.tools.reports import console as make_console
from cortensor.tools.reports import render_table, run_report

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


QUESTIONS = [
    "What will the weather be like tomorrow?",
    "Set an alarm for seven in the morning.",
    "I want to talk to a real person.",
    "Translate thank you into French.",
]


def _speech_job(folder: Path) -> JobRequest:
    wav = speech.long_speech(speech.SENTENCES[3:10], folder / "demo-speech.wav")
    audio = base64.b64encode(wav.read_bytes()).decode("ascii")
    return JobRequest(task="transcribe", audio=audio, redundancy=3, deadline_s=240)


def _shown(job: JobRequest, verdict: Verdict) -> tuple[str, str]:
    """A job's input and its verified output, each in a few words."""
    if verdict.status != "verified":
        return (job.inputs or ["(audio)"])[0][:48], verdict.reason[:60]
    if verdict.transcript is not None:
        t = verdict.transcript
        where = f", {len(verdict.parts)} parts" if verdict.parts else ""
        return f"{t.duration_s:.1f} s of speech{where}", t.text[:60] + " ..."
    if verdict.classes is not None:
        labels = ", ".join(f"{c.label} {c.score:.2f}" for c in verdict.classes)
        return f"{len(job.inputs)} questions", labels[:60]
    vector = (verdict.embeddings or [[]])[0]
    head = ", ".join(f"{x:+.3f}" for x in vector[:3])
    return job.inputs[0][:48], f"{len(vector)}-d [{head}, ...]"


def _results_table(jobs: list[JobRequest], verdicts: list[Verdict]) -> Table:
    table = Table(title="Verified results")
    for column in ("task", "input", "status", "agreed", "disagreed", "output"):
        table.add_column(column)
    for job, verdict in zip(jobs, verdicts, strict=True):
        shown_input, shown_output = _shown(job, verdict)
        table.add_row(
            job.task,
            shown_input,
            verdict.status,
            ", ".join(verdict.agreeing) or "-",
            ", ".join(verdict.disagreeing) or "-",
            shown_output,
        )
    return table


def run_demo(settings: Settings, *, jobs: int, redundancy: int, log_dir: Path) -> int:
    """Start the fleet, push `jobs` jobs, print results and the report; 0 if all verified.

    `settings` are the admin's, which issue the fleet's credentials; the jobs go out as
    the fleet's client and the report is read as its reports principal."""
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
        batch.append(JobRequest(task="classify", inputs=QUESTIONS, top_k=3, redundancy=redundancy))
        batch.append(_speech_job(log_dir))
        client = Settings(credentials=log_dir / "client.json", models_dir=settings.models_dir)
        verdicts = asyncio.run(_push(client, batch, console))
        # Replicas still running on a slower node once their job is decided: let them
        # finish (or be charged here) rather than stop the node with them in hand.
        held = fleet.wait_idle()
        if held:
            console.print(f"{held} replicas still held by the fleet's nodes after 60 s")
        console.print(_results_table(batch, verdicts))
        console.print(
            render_table(
                "Node leaderboard (db/reports/leaderboard.sql): the dishonest node is"
                " quarantined by its first known-answer probe",
                run_report(Settings(credentials=log_dir / "reports.json"), "leaderboard"),
            )
        )
        console.print("stopping the fleet")
    verified = sum(v.status == "verified" for v in verdicts)
    console.print(f"{verified} of {len(batch)} jobs verified; fleet stopped")
    return 0 if verified == len(batch) else 1
