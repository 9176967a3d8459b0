-- HTTP phase breakdown per (target, src_region): perftest's columns, long format (one row per phase).
--
-- Phases: dns_ms, tcp_ms, tls_ms, first_byte_ms, last_byte_ms, total_ms (meanings in the field
-- table). Each phase is aggregated over the deduplicated http/https records where it is not null
-- (tls is null for plain http; a failed sample contributes the phases it completed).
-- phase_order keeps perftest's column order for sorting.
-- Columns: target, src_region, phase, phase_order, records (all http(s) records of the group),
--   failed (ok = false), n (values of this phase), avg_ms, p50_ms, p99_ms, min_ms, max_ms.
-- #include include/prelude.sql
http AS (
  SELECT d.*
  FROM dedup d
  WHERE d.protocol IN ('http', 'https')
),
samples AS (
  SELECT target, src_region, 'dns' AS phase, 1 AS phase_order, dns_ms AS sample_ms FROM http WHERE dns_ms IS NOT NULL
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
-- #include include/percentiles.sql group=target,src_region,phase,phase_order
counts AS (
  SELECT target, src_region,
         count(*) AS records,
         sum(CASE WHEN ok THEN 0 ELSE 1 END) AS failed
  FROM http
  GROUP BY target, src_region
)
SELECT p.target, p.src_region, p.phase, p.phase_order, c.records, c.failed, p.samples AS n,
       p.mean_ms AS avg_ms, p.p50_ms, p.p99_ms, p.min_ms, p.max_ms
FROM pct p
JOIN counts c
  ON c.target IS NOT DISTINCT FROM p.target AND c.src_region IS NOT DISTINCT FROM p.src_region
ORDER BY p.target, p.src_region, p.phase_order
