-- HTTP phase breakdown per (target, src_region): perftest's columns, long format (one row per phase).
--
-- Phases: dns_ms, tcp_ms, tls_ms, first_byte_ms, last_byte_ms, total_ms (meanings in the field
-- table). Each phase is aggregated over the deduplicated http/https records where it is not null
-- (tls is null for plain http; a failed sample contributes the phases it completed).
-- phase_order keeps perftest's column order for sorting.
-- Columns: target, src_region, phase, phase_order, records (all http(s) records of the group),
--   failed (ok = false), n (values of this phase), avg_ms, p50_ms, p99_ms, min_ms, max_ms.
-- Time range (every shipped query):
--   params: from, to
--   '${from}'  inclusive, '${to}' exclusive: UTC instants written exactly like `ts`,
--              YYYY-MM-DDTHH:MM:SS.ffffffZ (e.g. 2024-05-01T00:00:00.000000Z), so that string
--              comparison with `ts` is time comparison. scripts/athena-local --from/--to
--              normalises any ISO 8601 time to that form and substitutes it; in Athena the named
--              queries of infra/cloudformation/analytics.yaml replace them with the last 24 hours.
--   Records are selected by measurement time `ts`. Partitions (dt = UTC *arrival* date) are pruned to
--   [date(from) - 1 day, date(to) + 2 days]: arrival follows measurement, possibly late after a
--   spool replay; widen the upper bound if an outage spooled records for longer.
-- Deduplication: Firehose delivery is at least once; a record delivered twice has the same
--   record_id, and only the first copy (row_number() = 1 over record_id) is counted.
-- Percentiles: nearest rank, as the agent computes rtt_p50_ms/rtt_p99_ms: the value at rank
--   ceil(p * n) of the n values sorted ascending, with p a DOUBLE (0.5e0, 0.99e0) so the rank is
--   computed exactly as the agent's f64 arithmetic does. Exact (not approx_percentile).

WITH in_range AS (
  SELECT r.*
  FROM records r
  WHERE r.dt BETWEEN CAST(CAST(date_add('day', -1, CAST(substr('${from}', 1, 10) AS date)) AS date) AS varchar)
                 AND CAST(CAST(date_add('day', 2, CAST(substr('${to}', 1, 10) AS date)) AS date) AS varchar)
    AND r.ts >= '${from}'
    AND r.ts < '${to}'
),
dedup AS (
  SELECT *
  FROM (
    SELECT i.*, row_number() OVER (PARTITION BY i.record_id ORDER BY i.dt, i.hour) AS copy_no
    FROM in_range i
  ) numbered
  WHERE copy_no = 1
),
http AS (
  SELECT d.*
  FROM dedup d
  WHERE d.protocol IN ('http', 'https')
),
phases AS (
  SELECT target, src_region, 'dns' AS phase, 1 AS phase_order, dns_ms AS ms FROM http WHERE dns_ms IS NOT NULL
  UNION ALL
  SELECT target, src_region, 'tcp', 2, tcp_ms FROM http WHERE tcp_ms IS NOT NULL
  UNION ALL
  SELECT target, src_region, 'tls', 3, tls_ms FROM http WHERE tls_ms IS NOT NULL
  UNION ALL
  SELECT target, src_region, 'first_byte', 4, first_byte_ms FROM http WHERE first_byte_ms IS NOT NULL
  UNION ALL
  SELECT target, src_region, 'last_byte', 5, last_byte_ms FROM http WHERE last_byte_ms IS NOT NULL
  UNION ALL
  SELECT target, src_region, 'total', 6, total_ms FROM http WHERE total_ms IS NOT NULL
),
ranked AS (
  SELECT p.*,
         row_number() OVER (PARTITION BY p.target, p.src_region, p.phase ORDER BY p.ms) AS rn,
         count(*) OVER (PARTITION BY p.target, p.src_region, p.phase) AS n
  FROM phases p
),
pct AS (
  SELECT target, src_region, phase,
         max(phase_order) AS phase_order,
         max(n) AS n,
         avg(ms) AS avg_ms,
         max(CASE WHEN rn = CAST(ceil(0.5e0 * n) AS bigint) THEN ms END) AS p50_ms,
         max(CASE WHEN rn = CAST(ceil(0.99e0 * n) AS bigint) THEN ms END) AS p99_ms,
         min(ms) AS min_ms,
         max(ms) AS max_ms
  FROM ranked
  GROUP BY target, src_region, phase
),
counts AS (
  SELECT target, src_region,
         count(*) AS records,
         sum(CASE WHEN ok THEN 0 ELSE 1 END) AS failed
  FROM http
  GROUP BY target, src_region
)
SELECT p.target, p.src_region, p.phase, p.phase_order, c.records, c.failed, p.n,
       p.avg_ms, p.p50_ms, p.p99_ms, p.min_ms, p.max_ms
FROM pct p
JOIN counts c
  ON c.target IS NOT DISTINCT FROM p.target AND c.src_region IS NOT DISTINCT FROM p.src_region
ORDER BY p.target, p.src_region, p.phase_order
