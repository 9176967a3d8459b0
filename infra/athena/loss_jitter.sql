-- Loss and jitter of probe trains (udp, quic) per (src_region, dst_region, protocol).
--
-- loss_ratio = sum(lost) / sum(sent) over deduplicated trains (packet-weighted, not a mean of
-- per-train ratios). duplicates, reordered and late are summed packet counts. Jitter is the agent's
-- per-train RFC 3550 jitter_ms; jitter_p50_ms/jitter_p99_ms are nearest-rank over trains.
-- trains_with_loss counts trains with lost > 0; failed counts trains with ok = false (no reply).
-- Columns: src_region, dst_region, protocol, trains, failed, trains_with_loss, sent, lost,
--   loss_ratio, duplicates, reordered, late, jitter_avg_ms, jitter_p50_ms, jitter_p99_ms.
-- #include include/prelude.sql
trains AS (
  SELECT d.*
  FROM dedup d
  WHERE d.kind = 'probe' AND d.protocol IN ('udp', 'quic')
),
samples AS (
  SELECT t.src_region, t.dst_region, t.protocol, t.jitter_ms AS sample_ms
  FROM trains t
  WHERE t.jitter_ms IS NOT NULL
),
-- #include include/percentiles.sql group=src_region,dst_region,protocol
counts AS (
  SELECT src_region, dst_region, protocol,
         count(*) AS trains,
         sum(CASE WHEN ok THEN 0 ELSE 1 END) AS failed,
         sum(CASE WHEN lost > 0 THEN 1 ELSE 0 END) AS trains_with_loss,
         sum(sent) AS sent,
         sum(lost) AS lost,
         CAST(sum(lost) AS double) / nullif(sum(sent), 0) AS loss_ratio,
         sum(duplicates) AS duplicates,
         sum(reordered) AS reordered,
         sum(late) AS late,
         avg(jitter_ms) AS jitter_avg_ms
  FROM trains
  GROUP BY src_region, dst_region, protocol
)
SELECT c.src_region, c.dst_region, c.protocol, c.trains, c.failed, c.trains_with_loss,
       c.sent, c.lost, c.loss_ratio, c.duplicates, c.reordered, c.late,
       c.jitter_avg_ms, j.p50_ms AS jitter_p50_ms, j.p99_ms AS jitter_p99_ms
FROM counts c
LEFT JOIN pct j
  ON j.src_region IS NOT DISTINCT FROM c.src_region AND j.dst_region IS NOT DISTINCT FROM c.dst_region AND j.protocol IS NOT DISTINCT FROM c.protocol
ORDER BY c.src_region, c.dst_region, c.protocol
