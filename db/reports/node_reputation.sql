-- Reputation of every node known to the ledger, best first.
--
-- Run it with:  psql -d cortensor -f db/reports/node_reputation.sql
-- (or psql -d "$CORTENSOR_DATABASE_URL" -f db/reports/node_reputation.sql)
--
-- score: cortensor_score(agreed, disagreed, timed_out) over the plain counts, rounded
-- to 4 decimals; a node with no events scores 0.5. status: live | draining | offline (no heartbeat
-- for 10 seconds). jobs counts the distinct jobs the node was ever assigned.
SELECT * FROM node_reputation_report ORDER BY score DESC, node_id;
