-- One node's reputation history, event by event (view node_reputation_history).
--
-- Run it with:  psql -d cortensor -v node=NODE_ID -f db/reports/node_history.sql
-- or:           cortensor report node_history --node NODE_ID [--json]
--
-- One row per reputation event of the node, in the order the ledger folded them
-- (node_seq). kind: agreed | disagreed | timed_out; probe: the job was a known-answer
-- probe. agreed, disagreed, timed_out: the node's counts up to and including this
-- event, undecayed; score: (agreed + 1) / (agreed + disagreed + timed_out + 2) over
-- them, 4 decimals, so the score can be seen moving. The decayed score and the trust
-- state the node holds now are in the leaderboard report.
SELECT
    node_seq,
    created_at,
    job_id,
    model,
    kind,
    probe,
    agreed,
    disagreed,
    timed_out,
    round(score::numeric, 4)::double precision AS score
FROM node_reputation_history
WHERE node_id = :'node'
ORDER BY node_seq, event_id;
