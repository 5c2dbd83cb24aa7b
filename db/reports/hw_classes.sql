-- Hardware classes: nodes, jobs, latency and agreement per class (view hw_class_summary).
--
-- Run it with:  psql -d cortensor -f db/reports/hw_classes.sql
-- or:           cortensor report hw_classes [--json]
--
-- Probes are left out of every column but nodes. Work counts in the class it ran on
-- (the assignment's class); a job with replicas on two classes counts in both.
-- nodes: nodes announcing the class now. jobs: distinct jobs (split jobs' parts each
-- count) with a replica assigned in the class. results: answers returned without an
-- error. p50_result_ms: median time a node spent on one of those answers (results.
-- elapsed_ms, measured by the node). p50_verdict_ms: median time from a job's
-- submission to its verdict (verdicts.created_at - jobs.created_at), whatever the
-- verdict, over the class's jobs that have one. agreed, disagreed, timed_out: the
-- class's reputation events; agreement_rate = agreed / (agreed + disagreed), 4 decimals.
SELECT
    hw_class,
    nodes,
    jobs,
    results,
    round(p50_result_ms::numeric, 1)::double precision AS p50_result_ms,
    round(p50_verdict_ms::numeric, 1)::double precision AS p50_verdict_ms,
    agreed,
    disagreed,
    timed_out,
    round(agreement_rate::numeric, 4)::double precision AS agreement_rate
FROM hw_class_summary
ORDER BY hw_class;
