-- Load jobs: per-region latency vs load curve, one row per job, source region and step.
--
-- From the kind = 'load' records (one per agent, job and second; include/load_steps.sql): the
-- step's configured level (workers per agent, closed model, or req/s per agent, open model;
-- the largest any agent reported), the region's intended and achieved rate (req/s, summed over
-- its agents), requests sent, errors (5xx + 429 + failed requests) and their share of the
-- requests, and the corrected (from the intended send time) p50/p99 merged from the agents'
-- histograms over the step's seconds — not an average of per-second percentiles.
-- Columns: job_id, src_region, load_step, first_ts, agents, agent_seconds, level, workers (mean
--   per region), intended_rps, achieved_rps, requests, status_2xx, status_429, status_5xx,
--   failed (connect, timeout, TLS, I/O), errors, error_share, latencies (samples in the merged
--   histogram), p50_ms, p99_ms, max_ms.
-- #include include/prelude.sql
-- #include include/load_steps.sql
SELECT s.job_id, s.src_region, s.load_step, s.first_ts, s.agents, s.agent_seconds, s.level, s.workers,
       s.intended_rps, s.achieved_rps, s.requests, s.status_2xx, s.status_429, s.status_5xx, s.failed,
       s.errors, CAST(s.errors AS double) / nullif(s.requests, 0) AS error_share,
       coalesce(p.latencies, 0) AS latencies, p.p50_ms, p.p99_ms, s.max_ms
FROM steps s
LEFT JOIN step_pct p
  ON p.job_id = s.job_id AND p.src_region IS NOT DISTINCT FROM s.src_region AND p.load_step = s.load_step
ORDER BY s.job_id, s.src_region, s.load_step
