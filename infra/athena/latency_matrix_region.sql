-- Latency matrix by region pair: exact p50/p99 RTT, loss and jitter per (src_region, dst_region, protocol).
--
-- RTT samples: udp/quic trains contribute every element of rtt_samples_ms (per-packet RTT); tcp
-- contributes rtt_ms (= connect time) and http/https total_ms (connect start -> last byte), one per
-- successful record. Only kind = 'probe' (relay records are in relay_penalty.sql). External targets
-- (no dst_region) appear as dst_region '(external)'.
-- Columns: records (deduplicated), failed (ok = false), samples (RTT values), p50_ms, p99_ms,
--   min_ms, max_ms, mean_ms, sent, lost, loss_ratio = sum(lost) / sum(sent) over trains,
--   jitter_avg_ms = mean of per-train jitter_ms.
-- #include include/prelude.sql
probes AS (
  SELECT d.*, coalesce(d.dst_region, '(external)') AS dst_key
  FROM dedup d
  WHERE d.kind = 'probe'
),
-- #include include/probe_counts.sql group=src_region,dst_key,protocol
-- #include include/rtt_samples.sql group=src_region,dst_key,protocol
-- #include include/percentiles.sql group=src_region,dst_key,protocol
SELECT c.src_region, c.dst_key AS dst_region, c.protocol, c.records, c.failed,
       coalesce(p.samples, 0) AS samples, p.p50_ms, p.p99_ms, p.min_ms, p.max_ms, p.mean_ms,
       c.sent, c.lost, c.loss_ratio, c.jitter_avg_ms
FROM counts c
LEFT JOIN pct p
  ON p.src_region IS NOT DISTINCT FROM c.src_region AND p.dst_key IS NOT DISTINCT FROM c.dst_key AND p.protocol IS NOT DISTINCT FROM c.protocol
ORDER BY c.src_region, dst_region, c.protocol
