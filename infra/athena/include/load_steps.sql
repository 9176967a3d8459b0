-- Per-step figures of load jobs (kind = 'load', one record per agent, job and second), shared by
-- load_curve.sql and load_breaking_point.sql: defines `loads`, `hist`, `hist_merged`,
-- `hist_cum`, `step_pct` and `steps` (one row per job_id, src_region, load_step) and ends with a
-- comma.

-- Latency percentiles are merged, not averaged: each record carries its corrected latency
-- histogram as lat_hist_ms (each non-empty bucket's representative value, ms) and
-- lat_hist_counts (its count, same order); the counts of equal bucket values are summed over the
-- region's agents and the step's seconds, and p50/p99 are the nearest-rank values of that merged
-- histogram (the bucket holding rank ceil(p * n)): what the agent's own step summary says, within
-- the histogram's 0.5 %. (sequence(1, greatest(cardinality, 1)) with element_at: an empty or
-- null histogram adds nothing, and a counts array shorter than the values is cut to it.)
loads AS (
  SELECT d.*
  FROM dedup d
  WHERE d.kind = 'load' AND d.load_step IS NOT NULL
),
hist AS (
  SELECT l.job_id, l.src_region, l.load_step,
         element_at(l.lat_hist_ms, h.i) AS value_ms,
         element_at(l.lat_hist_counts, h.i) AS n
  FROM loads l
  CROSS JOIN UNNEST(sequence(1, greatest(cardinality(l.lat_hist_ms), 1))) AS h (i)
),
hist_merged AS (
  SELECT job_id, src_region, load_step, value_ms, sum(n) AS n
  FROM hist
  WHERE value_ms IS NOT NULL AND n IS NOT NULL AND n > 0
  GROUP BY job_id, src_region, load_step, value_ms
),
hist_cum AS (
  SELECT m.*,
         sum(m.n) OVER (PARTITION BY m.job_id, m.src_region, m.load_step ORDER BY m.value_ms
                        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cum,
         sum(m.n) OVER (PARTITION BY m.job_id, m.src_region, m.load_step) AS total
  FROM hist_merged m
),
step_pct AS (
  SELECT job_id, src_region, load_step,
         max(total) AS latencies,
         min(CASE WHEN cum >= greatest(ceil(0.5e0 * total), 1e0) THEN value_ms END) AS p50_ms,
         min(CASE WHEN cum >= greatest(ceil(0.99e0 * total), 1e0) THEN value_ms END) AS p99_ms
  FROM hist_cum
  GROUP BY job_id, src_region, load_step
),
-- Rates: an agent's record is one second of its load, so the region's rate in a step is the
-- mean per-agent second's rate times the agents (sum of the rates / seconds per agent).
-- Errors are what did not succeed for the target's reasons: 5xx, 429 (rate limited) and failed
-- requests (connect, timeout, TLS, I/O); error_share = errors / requests sent.
steps AS (
  SELECT l.job_id,
         l.src_region,
         l.load_step,
         min(l.ts) AS first_ts,
         count(DISTINCT l.src_agent) AS agents,
         count(*) AS agent_seconds,
         max(l.load_level) AS level,
         sum(l.load_workers) * count(DISTINCT l.src_agent) / CAST(count(*) AS double) AS workers,
         sum(l.intended_rps) * count(DISTINCT l.src_agent) / CAST(count(*) AS double) AS intended_rps,
         sum(l.achieved_rps) * count(DISTINCT l.src_agent) / CAST(count(*) AS double) AS achieved_rps,
         sum(l.requests) AS requests,
         sum(coalesce(l.status_2xx, 0)) AS status_2xx,
         sum(coalesce(l.status_429, 0)) AS status_429,
         sum(coalesce(l.status_5xx, 0)) AS status_5xx,
         sum(coalesce(l.errors_connect, 0) + coalesce(l.errors_timeout, 0) + coalesce(l.errors_tls, 0)
             + coalesce(l.errors_io, 0)) AS failed,
         sum(coalesce(l.status_5xx, 0) + coalesce(l.status_429, 0) + coalesce(l.errors_connect, 0)
             + coalesce(l.errors_timeout, 0) + coalesce(l.errors_tls, 0) + coalesce(l.errors_io, 0)) AS errors,
         max(l.lat_max_ms) AS max_ms
  FROM loads l
  GROUP BY l.job_id, l.src_region, l.load_step
),
