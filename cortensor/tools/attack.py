"""The live measurement of an attacker that adapts: a fleet of honest nodes and one
`--fault adaptive` node (probe-aware, and cheating only when no peer's result shows
within 50 ms), embedding jobs at redundancy auto, and what the users were handed.

Every verified embedding a user received is compared with a direct computation by the
fp32 model through the project's comparator (int8 against fp32 tolerance): a result
outside it is a wrong result delivered. The ledger's latest revision of each verdict
says how many of those a re-validation corrected afterwards. JSON on stdout
(`ops/attack`, or `python -m cortensor.tools.attack`).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import numpy as np
import typer
from numpy.typing import NDArray

from cortensor.adapters.ledger import migrate
from cortensor.adapters.provision import setup_brokers, teardown_brokers
from cortensor.client import Client
from cortensor.inference.manifest import load_manifest
from cortensor.inference.runtimes.embedding import EmbeddingRuntime
from cortensor.protocol.comparators.embed import agree
from cortensor.schemas import JobRequest, Verdict
from cortensor.settings import Settings
from cortensor.tools.fleet import Fleet
from cortensor.tools.prepare import prepare_models
from cortensor.tools.reports import run_report

MODEL = "all-MiniLM-L6-v2"
HOSTILE = "hostile-adaptive-1"
SYBIL = "sybil"
"""The sybil nodes' group, and the prefix of their first node ids."""
WORDS = (  # noqa: SIM905 (a paragraph of words reads better than a column of them)
    "river mountain engine garden violin copper lantern harbor meadow thunder velvet"
    " orchard canyon glacier pepper saddle timber falcon marble ribbon cabinet anchor"
    " blossom compass desert ember feather goblet hammer island jacket kettle ladder"
    " mirror needle oyster pillow quarry rocket silver tunnel umbrella valley wagon"
    " yarn zipper almond basket candle dolphin eagle forest guitar helmet igloo jungle"
    " kitten lemon magnet noodle ocean parrot quilt rabbit spider tomato unicorn vessel"
    " walnut xylophone yogurt zebra bakery chimney dentist elbow fountain giraffe hotel"
    " insect jewel kiosk lobby mango nephew onion penguin rumor stadium tractor uncle"
    " vinegar window"
).split()
VERBS = (  # noqa: SIM905
    "builds carries paints repairs watches finds sells hides cleans measures borrows"
    " describes follows draws opens"
).split()
"""Words of the jobs' sentences: random sentences of them are far apart as embeddings,
so that no two jobs look like one input sent twice."""
JUDGED_AS = ("fp32", "int8")
"""A delivered embedding is judged against the fp32 reference with the comparator's
int8-to-fp32 tolerance, the loosest an honest answer of any precision needs."""


def sentences(count: int, seed: int = 1) -> list[str]:
    """`count` distinct sentences of random words, the same for the same seed."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        words = rng.sample(WORDS, 6)
        text = (
            f"The {words[0]} {rng.choice(VERBS)} a {words[1]} and a {words[2]} near the"
            f" {words[3]}, while {rng.randint(2, 99)} {words[4]}s wait by the {words[5]}."
        )
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


async def submit_all(
    settings: Settings, texts: Sequence[str], *, in_flight: int, deadline_s: float = 120.0
) -> list[Verdict]:
    """One auto-redundancy embedding job per text, `in_flight` at a time; the verdicts
    in order, as the user receives them (a failed wait counts as a failed verdict)."""
    async with Client(settings) as client:
        gate = asyncio.Semaphore(in_flight)

        async def one(text: str) -> Verdict:
            job = JobRequest(inputs=[text], deadline_s=deadline_s)
            async with gate:
                try:
                    return await client.run(job, timeout_s=deadline_s + 30.0)
                except TimeoutError:
                    return Verdict(job_id=job.job_id, status="failed", reason="no verdict")

        return list(await asyncio.gather(*(one(t) for t in texts)))


def reference(settings: Settings, texts: Sequence[str]) -> NDArray[np.float32]:
    """The texts embedded directly by the fp32 model."""
    runtime = EmbeddingRuntime.from_manifest(
        settings.models_dir, load_manifest(settings.models_dir).variant_for(MODEL, "cpu-fp32")
    )
    return runtime.embed(list(texts))


def wrong(output: Any, expected: NDArray[np.float32]) -> bool:
    """Whether a verified output is not the text's embedding (the comparator says so)."""
    return not agree(output, JUDGED_AS[1], [expected.tolist()], JUDGED_AS[0])


async def latest_outputs(settings: Settings, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Any]:
    """The canonical output of each job's latest verdict revision, from the ledger."""
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        rows = await conn.fetch(
            """
            SELECT v.job_id, v.status, v.revision, r.output
            FROM verdicts v LEFT JOIN results r ON r.result_id = v.canonical_result_id
            WHERE v.job_id = ANY($1::uuid[])
            """,
            list(job_ids),
        )
    finally:
        await conn.close()
    return {
        r["job_id"]: json.loads(r["output"]) if isinstance(r["output"], str) else r["output"]
        for r in rows
        if r["status"] == "verified"
    }


async def spend(settings: Settings) -> tuple[dict[str, int], dict[str, int]]:
    """Real (not probe) jobs verified, their assignments, those that ran alone and the
    probes sent; and by node, the real jobs whose verdict stands on its answer alone."""
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        row = await conn.fetchrow(
            """
            SELECT count(DISTINCT j.job_id) AS jobs, count(a.assignment_id) AS replicas,
                   count(DISTINCT j.job_id) FILTER (WHERE j.redundancy = 1) AS solo,
                   (SELECT count(*) FROM jobs WHERE probe) AS probes
            FROM jobs j JOIN assignments a USING (job_id)
            WHERE NOT j.probe AND j.status = 'verified'
            """
        )
        alone = await conn.fetch(
            """
            SELECT r.node_id, count(*) AS jobs
            FROM verdicts v
            JOIN jobs j USING (job_id)
            JOIN results r ON r.result_id = v.canonical_result_id
            WHERE NOT j.probe AND v.status = 'verified' AND v.replicas <= 1
            GROUP BY r.node_id
            """
        )
    finally:
        await conn.close()
    totals = {k: int(row[k]) for k in ("jobs", "replicas", "solo", "probes")}
    return totals, {str(r["node_id"]): int(r["jobs"]) for r in alone}


_DECISION = re.compile(r"hostile decision .*?cheat=(True|False).*?why=('[^']*'|\S+)")


def decisions(log: Path) -> dict[str, int]:
    """How often a hostile node cheated and why it did not, from its log."""
    counts: Counter[str] = Counter()
    if log.exists():
        for line in log.read_text(errors="replace").splitlines():
            found = _DECISION.search(line)
            if found:
                why = re.sub(r"\s*\(.*?\)", "", found[2].strip("'"))  # counts left out
                counts["cheated" if found[1] == "True" else f"honest: {why}"] += 1
    return dict(sorted(counts.items()))


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the users were handed, judged against the direct computation."""

    jobs: int
    verified: int
    wrong_delivered: list[int]
    """Indices of verified results the users received that were wrong."""
    wrong_unchecked: list[int]
    """Of those, the ones that one node's answer alone decided."""
    wrong_from: dict[str, int]
    """Wrong results delivered, by the node(s) whose answer stood."""
    wrong_after_revision: list[int]
    """Indices whose latest revision in the ledger is still wrong."""
    not_verified: dict[str, int]


def judge(
    settings: Settings, texts: Sequence[str], verdicts: Sequence[Verdict]
) -> tuple[Delivery, NDArray[np.float32]]:
    """Compare every delivered result with the fp32 model's own answer."""
    expected = reference(settings, texts)
    bad = [
        i
        for i, v in enumerate(verdicts)
        if v.status == "verified" and wrong(v.embeddings, expected[i])
    ]
    latest = asyncio.run(latest_outputs(settings, [v.job_id for v in verdicts]))
    still = [
        i
        for i, v in enumerate(verdicts)
        if v.job_id in latest and wrong(latest[v.job_id], expected[i])
    ]
    delivery = Delivery(
        jobs=len(verdicts),
        verified=sum(v.status == "verified" for v in verdicts),
        wrong_delivered=bad,
        wrong_unchecked=[i for i in bad if verdicts[i].replicas <= 1],
        wrong_from=dict(Counter(",".join(sorted(verdicts[i].agreeing)) for i in bad)),
        wrong_after_revision=still,
        not_verified=dict(Counter(v.status for v in verdicts if v.status != "verified")),
    )
    return delivery, expected


def standings(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every node's leaderboard row (trust, score, streak, agreed, disagreed, ...)."""
    rows = run_report(settings, "leaderboard")
    return {
        str(r["node_id"]): {
            k: r[k] for k in ("trust", "score", "streak", "agreed", "disagreed", "timed_out")
        }
        for r in rows
    }


def measure(
    settings: Settings,
    *,
    jobs: int,
    hostile: Sequence[str],
    in_flight: int,
    logs: Mapping[str, Path] | None = None,
    seed: int = 1,
) -> dict[str, Any]:
    """Push `jobs` auto-redundancy embedding jobs through a running fleet and report what
    was delivered, what it cost, and how the `hostile` nodes stand (with the decisions
    their `logs` record)."""
    texts = sentences(jobs, seed)
    started = time.perf_counter()
    verdicts = asyncio.run(submit_all(settings, texts, in_flight=in_flight))
    wall = time.perf_counter() - started
    delivery, _ = judge(settings, texts, verdicts)
    board = standings(settings)
    cost, alone = asyncio.run(spend(settings))
    n = max(delivery.jobs, 1)
    logs = logs or {}
    identities = {h: respawned(h, board) for h in hostile}
    hostile_ids = {i for ids in identities.values() for i in ids}
    return {
        "jobs": delivery.jobs,
        "verified": delivery.verified,
        "not_verified": delivery.not_verified,
        "wrong_delivered": len(delivery.wrong_delivered),
        "wrong_delivered_rate": len(delivery.wrong_delivered) / n,
        "wrong_delivered_unchecked": len(delivery.wrong_unchecked),
        "wrong_delivered_from": delivery.wrong_from,
        "wrong_after_revision": len(delivery.wrong_after_revision),
        "hostile": {
            h: {
                **board.get(h, {}),
                "delivered_unchecked": sum(alone.get(i, 0) for i in ids),
                "identities": {i: board[i] for i in ids if i != h},
                "decisions": decisions(logs[h]) if h in logs else {},
            }
            for h, ids in identities.items()
        },
        "honest": {n: row for n, row in board.items() if n not in hostile_ids},
        "replicas_per_verified_job": cost["replicas"] / max(cost["jobs"], 1),
        "solo_jobs": cost["solo"],
        "probes": cost["probes"],
        "wall_s": round(wall, 1),
        "jobs_per_s": round(delivery.jobs / wall, 1) if wall > 0 else None,
    }


def respawned(node_id: str, names: Iterable[str]) -> list[str]:
    """`node_id` and the identities a sybil took after it (`<id>-r1`, `-r2`, ...)."""
    again = re.compile(re.escape(node_id) + r"(-r\d+)?")
    return sorted(n for n in names if again.fullmatch(n))


async def known_nodes(settings: Settings) -> list[tuple[str, str]]:
    """Every node the ledger has heard of, with its class (for tearing its queue down)."""
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        rows = await conn.fetch("SELECT node_id, hw_class FROM nodes")
    finally:
        await conn.close()
    return [(str(r["node_id"]), str(r["hw_class"])) for r in rows]


def isolated_settings(base: Settings) -> Settings:
    """`base` with a namespace and a ledger database of this run's own."""
    tag = uuid.uuid4().hex[:10]
    dsn = base.database_url.rsplit("/", 1)[0]
    return base.model_copy(
        update={"namespace": f"attack{tag}", "database_url": f"{dsn}/cortensor_attack_{tag}"}
    )


def run_attack(
    base: Settings,
    *,
    jobs: int,
    honest: int,
    window_ms: float,
    trust_after: int,
    in_flight: int,
    log_dir: Path,
    seed: int = 1,
    keep: bool = False,
    adaptive: bool = True,
    sybils: int = 0,
    coordinate: bool = False,
) -> dict[str, Any]:
    """Set up a namespace and a ledger, start the fleet with one adaptive node (and
    `sybils` sybil nodes of one group, coordinated with `coordinate`), measure, and tear
    everything down (the ledger is kept with `keep`)."""
    settings = isolated_settings(base)
    prepare_models(settings.models_dir, log=lambda _: None)  # checks; builds what is missing
    migrate.upgrade(settings)
    asyncio.run(setup_brokers(settings))
    hostile: dict[str, list[str]] = {}
    if adaptive:
        hostile[HOSTILE] = ["--fault", "adaptive", "--node-id", HOSTILE]
        hostile[HOSTILE] += ["--fault-window-ms", str(window_ms)]
        hostile[HOSTILE] += ["--fault-trust-after", str(trust_after)]
    for i in range(1, sybils + 1):
        hostile[f"{SYBIL}-{i}"] = ["--fault", "sybil", "--fault-group", SYBIL]
        hostile[f"{SYBIL}-{i}"] += ["--node-id", f"{SYBIL}-{i}"]
        hostile[f"{SYBIL}-{i}"] += ["--fault-coordinate"] if coordinate else []
    fleet = Fleet(
        settings,
        nodes=honest,
        extra_nodes=list(hostile.values()),
        log_dir=log_dir,
        # Five nodes share the machine: give a replica time to finish under load.
        env={"CORTENSOR_ASSIGNMENT_TIMEOUT_S": "8"},
    )
    try:
        fleet.start()
        fleet.wait_ready(admitted=honest)
        report = measure(
            settings,
            jobs=jobs,
            hostile=list(hostile),
            in_flight=in_flight,
            logs={h: log_dir / f"extra-node-{i}.log" for i, h in enumerate(hostile, start=1)},
            seed=seed,
        )
    finally:
        fleet.stop()
        nodes = asyncio.run(known_nodes(settings))
        asyncio.run(teardown_brokers(settings, nodes))
        if not keep:
            migrate.drop_database(settings)
    report["setup"] = {
        "honest_nodes": honest,
        "hostile": {h: " ".join(args) for h, args in hostile.items()},
        "in_flight": in_flight,
        "seed": seed,
        "ledger": settings.database_url if keep else None,
    }
    return report


def main(
    jobs: Annotated[int, typer.Option(min=1, help="Embedding jobs at redundancy auto.")] = 1500,
    honest: Annotated[int, typer.Option(min=3, help="Honest nodes (the Procfile's).")] = 4,
    window_ms: Annotated[
        float, typer.Option(min=0, help="The adaptive node's peer window.")
    ] = 50.0,
    trust_after: Annotated[
        int,
        typer.Option(
            min=0, help="The adaptive node cheats only past this many checked valid results."
        ),
    ] = 0,
    in_flight: Annotated[
        int, typer.Option(min=1, help="Jobs awaiting their verdict at once.")
    ] = 16,
    seed: Annotated[int, typer.Option(help="Seed of the jobs' sentences.")] = 1,
    log_dir: Annotated[Path, typer.Option(help="Where the fleet logs.")] = Path("var/attack-logs"),
    keep: Annotated[bool, typer.Option(help="Keep the run's ledger database.")] = False,
    adaptive: Annotated[bool, typer.Option(help="Run the adaptive node.")] = True,
    sybils: Annotated[
        int, typer.Option(min=0, help="Sybil nodes of one group beside it (--fault sybil).")
    ] = 0,
    coordinate: Annotated[
        bool, typer.Option(help="The sybils cheat only where two of them hold one job.")
    ] = False,
) -> None:
    """Measure what an adaptive attacker gets through a live fleet; JSON on stdout."""
    report = run_attack(
        Settings(),
        jobs=jobs,
        honest=honest,
        window_ms=window_ms,
        trust_after=trust_after,
        in_flight=in_flight,
        log_dir=log_dir,
        seed=seed,
        keep=keep,
        adaptive=adaptive,
        sybils=sybils,
        coordinate=coordinate,
    )
    typer.echo(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    typer.run(main)
