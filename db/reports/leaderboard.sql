-- Node leaderboard: every node by reputation score, best first (view node_leaderboard).
--
-- Run it with:  psql -d cortensor -f db/reports/leaderboard.sql
-- or:           cortensor report leaderboard [--json]
--
-- rank: 1 for the best score (ties share a rank). trust: probation | active |
-- quarantined (probation for a node with no events yet). score: the node's standing as
-- routing sees it, the ledger's function cortensor_score over its time-decayed counts
-- (half-life one week), 0.5 with no events; 4 decimals (docs/trust.md has the formula).
-- streak: valid results in a row. observations: events folded into the standing.
-- agreed, disagreed, timed_out: plain counts of its events, undecayed, probes included.
SELECT
    rank,
    node_id,
    hw_class,
    trust,
    round(score::numeric, 4)::double precision AS score,
    streak,
    observations,
    agreed,
    disagreed,
    timed_out,
    last_seen
FROM node_leaderboard
ORDER BY rank, node_id;
