-- Load jobs: the breaking point per job and source region, the first step whose merged p99 crossed a threshold or whose errors began.
--
-- Parameters (the `params` CTE below; edit the values): p99_threshold_ms (default 500) — a step
-- breaks when its corrected p99, merged over the region's agents and the step's seconds
-- (include/load_steps.sql), is above it; max_error_share (default 0) — or when its errors
-- (5xx + 429 + failed requests) are more than this share of its requests (0: any error).
-- One row per job and region that ran a load step, also those that never broke (break_step
-- null): the last step before the break (or the last step run) is the load the region held.
-- Columns: job_id, src_region, steps (steps run), break_step, break_reason (p99, errors or
--   p99+errors), break_level, break_achieved_rps, break_p99_ms, break_error_share, held_step,
--   held_level, held_achieved_rps, held_p99_ms.
-- #include include/prelude.sql
-- #include include/load_steps.sql
params AS (
  SELECT 500e0 AS p99_threshold_ms, 0e0 AS max_error_share
),
judged AS (
  SELECT s.job_id, s.src_region, s.load_step, s.level, s.achieved_rps, p.p99_ms,
         CAST(s.errors AS double) / nullif(s.requests, 0) AS error_share,
         coalesce(p.p99_ms > x.p99_threshold_ms, false) AS slow,
         coalesce(CAST(s.errors AS double) / nullif(s.requests, 0) > x.max_error_share, false) AS failing
  FROM steps s
  CROSS JOIN params x
  LEFT JOIN step_pct p
    ON p.job_id = s.job_id AND p.src_region IS NOT DISTINCT FROM s.src_region AND p.load_step = s.load_step
),
firsts AS (
  SELECT job_id, src_region,
         count(*) AS steps,
         min(CASE WHEN slow OR failing THEN load_step END) AS break_step,
         max(load_step) AS last_step
  FROM judged
  GROUP BY job_id, src_region
),
held AS (
  SELECT j.job_id, j.src_region, max(j.load_step) AS held_step
  FROM judged j
  JOIN firsts f
    ON f.job_id = j.job_id AND f.src_region IS NOT DISTINCT FROM j.src_region
  WHERE j.load_step < coalesce(f.break_step, f.last_step + 1)
  GROUP BY j.job_id, j.src_region
)
SELECT f.job_id, f.src_region, f.steps, f.break_step,
       CASE WHEN b.slow AND b.failing THEN 'p99+errors' WHEN b.slow THEN 'p99' WHEN b.failing THEN 'errors' END
         AS break_reason,
       b.level AS break_level, b.achieved_rps AS break_achieved_rps, b.p99_ms AS break_p99_ms,
       b.error_share AS break_error_share,
       h.load_step AS held_step, h.level AS held_level, h.achieved_rps AS held_achieved_rps, h.p99_ms AS held_p99_ms
FROM firsts f
LEFT JOIN judged b
  ON b.job_id = f.job_id AND b.src_region IS NOT DISTINCT FROM f.src_region AND b.load_step = f.break_step
LEFT JOIN held hs
  ON hs.job_id = f.job_id AND hs.src_region IS NOT DISTINCT FROM f.src_region
LEFT JOIN judged h
  ON h.job_id = f.job_id AND h.src_region IS NOT DISTINCT FROM f.src_region AND h.load_step = hs.held_step
ORDER BY f.job_id, f.src_region
