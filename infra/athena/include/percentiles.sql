-- Exact nearest-rank percentiles of a CTE `samples` (group columns and sample_ms, one row per
-- value) per group, shared by every query that reports p50/p99 of values (latency matrices, time
-- series, HTTP phases, jitter): `-- #include include/percentiles.sql group=COL,COL,...` puts the group
-- columns where {{group}} stands. Defines `ranked` (rn, n) and `pct` (the group columns, samples,
-- p50_ms, p99_ms, min_ms, max_ms, mean_ms) and ends with a comma.

-- Nearest rank as in the prelude: the value at rank ceil(p * n) of the n sorted values.
ranked AS (
  SELECT s.*,
         row_number() OVER (PARTITION BY {{group}} ORDER BY s.sample_ms) AS rn,
         count(*) OVER (PARTITION BY {{group}}) AS n
  FROM samples s
),
pct AS (
  SELECT {{group}},
         max(n) AS samples,
         max(CASE WHEN rn = CAST(ceil(0.5e0 * n) AS bigint) THEN sample_ms END) AS p50_ms,
         max(CASE WHEN rn = CAST(ceil(0.99e0 * n) AS bigint) THEN sample_ms END) AS p99_ms,
         min(sample_ms) AS min_ms,
         max(sample_ms) AS max_ms,
         avg(sample_ms) AS mean_ms
  FROM ranked
  GROUP BY {{group}}
),
