-- Replicas spent per verified job, hour by hour (view replica_spend).
--
-- Run it with:  psql -d cortensor -f db/reports/replicas.sql
-- or:           cortensor report replicas [--json]
--
-- hour: the hour the jobs were verified (their first verdict), in the session's time
-- zone. jobs: jobs verified then, probes left out; a split job counts as its parts.
-- replicas: assignments spent on those jobs, whatever became of them (a replica that
-- timed out and was sent to another node counts twice; a re-validation's replica counts
-- too). replicas_per_job: replicas / jobs, 2 decimals. unreplicated: jobs that cost a
-- single replica (adaptive replication trusted the node).
SELECT
    hour,
    jobs,
    replicas,
    round(replicas_per_job::numeric, 2)::double precision AS replicas_per_job,
    unreplicated
FROM replica_spend
ORDER BY hour;
