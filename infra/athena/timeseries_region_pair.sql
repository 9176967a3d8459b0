-- Time series per region pair: 5-minute buckets of exact p50/p99 RTT, loss and record counts.
--
-- bucket is the UTC start of the 5-minute interval containing ts, written like ts without
-- fractions (YYYY-MM-DDTHH:MM:00Z), so it sorts and plots as time (QuickSight: parse as date).
-- RTT samples as in latency_matrix_region.sql (udp/quic rtt_samples_ms elements, tcp rtt_ms,
-- http/https total_ms; kind = 'probe'). For one-minute buckets replace the 5 in bucket_minute.
-- Columns: bucket, src_region, dst_region, protocol, records, samples, p50_ms, p99_ms, mean_ms,
--   sent, lost, loss_ratio.
-- #include include/prelude.sql
probes AS (
  SELECT d.*,
         coalesce(d.dst_region, '(external)') AS dst_key,
         substr(d.ts, 1, 14)
           || lpad(CAST(CAST(substr(d.ts, 15, 2) AS integer) - CAST(substr(d.ts, 15, 2) AS integer) % 5 AS varchar), 2, '0')
           || ':00Z' AS bucket
  FROM dedup d
  WHERE d.kind = 'probe'
),
-- #include include/probe_counts.sql group=bucket,src_region,dst_key,protocol
-- #include include/rtt_samples.sql group=bucket,src_region,dst_key,protocol
-- #include include/percentiles.sql group=bucket,src_region,dst_key,protocol
SELECT c.bucket, c.src_region, c.dst_key AS dst_region, c.protocol, c.records,
       coalesce(p.samples, 0) AS samples, p.p50_ms, p.p99_ms, p.mean_ms,
       c.sent, c.lost, c.loss_ratio
FROM counts c
LEFT JOIN pct p
  ON p.bucket IS NOT DISTINCT FROM c.bucket AND p.src_region IS NOT DISTINCT FROM c.src_region AND p.dst_key IS NOT DISTINCT FROM c.dst_key AND p.protocol IS NOT DISTINCT FROM c.protocol
ORDER BY c.bucket, c.src_region, dst_region, c.protocol
