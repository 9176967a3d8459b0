-- Latency matrix by agent pair: exact p50/p99 RTT, loss and jitter per (src_agent, dst, protocol).
--
-- dst is dst_agent, or the target (URL or host:port) for external targets. Regions are carried
-- along for grouping in dashboards. RTT samples as in latency_matrix_region.sql: udp/quic trains
-- contribute every element of rtt_samples_ms, tcp rtt_ms, http/https total_ms; kind = 'probe' only.
-- Columns: src_agent, src_region, dst, dst_region, protocol, records, failed, samples, p50_ms,
--   p99_ms, min_ms, max_ms, mean_ms, sent, lost, loss_ratio, jitter_avg_ms.
-- #include include/prelude.sql
probes AS (
  SELECT d.*, coalesce(d.dst_agent, d.target) AS dst_key
  FROM dedup d
  WHERE d.kind = 'probe'
),
-- #include include/probe_counts.sql group=src_agent,dst_key,protocol
-- #include include/rtt_samples.sql group=src_agent,dst_key,protocol
-- #include include/percentiles.sql group=src_agent,dst_key,protocol
SELECT c.src_agent, c.src_region_of AS src_region, c.dst_key AS dst, c.dst_region_of AS dst_region, c.protocol,
       c.records, c.failed,
       coalesce(p.samples, 0) AS samples, p.p50_ms, p.p99_ms, p.min_ms, p.max_ms, p.mean_ms,
       c.sent, c.lost, c.loss_ratio, c.jitter_avg_ms
FROM counts c
LEFT JOIN pct p
  ON p.src_agent IS NOT DISTINCT FROM c.src_agent AND p.dst_key IS NOT DISTINCT FROM c.dst_key AND p.protocol IS NOT DISTINCT FROM c.protocol
ORDER BY c.src_agent, dst, c.protocol
