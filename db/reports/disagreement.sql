-- Nodes by disagreement rate, worst first (view node_disagreement).
--
-- Run it with:  psql -d cortensor -f db/reports/disagreement.sql
-- or:           cortensor report disagreement [--json]
--
-- checked: the node's results that were compared with a canonical or known answer
-- (agreed + disagreed events), probes included. disagreed: those that did not match.
-- disagreement_rate = disagreed / checked, 4 decimals; empty for a node with nothing
-- checked (listed last). probe_checked, probe_disagreed: the part of checked and
-- disagreed that were known-answer probes. timed_out: deadlines missed (not in the rate).
SELECT
    node_id,
    hw_class,
    trust,
    checked,
    disagreed,
    round(disagreement_rate::numeric, 4)::double precision AS disagreement_rate,
    probe_checked,
    probe_disagreed,
    timed_out
FROM node_disagreement
ORDER BY node_disagreement.disagreement_rate DESC NULLS LAST, checked DESC, node_id;
