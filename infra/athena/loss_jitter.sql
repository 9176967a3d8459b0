-- Loss and jitter of probe trains (udp, quic) per (src_region, dst_region, protocol).
--
-- loss_ratio = sum(lost) / sum(sent) over deduplicated trains (packet-weighted, not a mean of
-- per-train ratios). duplicates, reordered and late are summed packet counts. Jitter is the agent's
-- per-train RFC 3550 jitter_ms; jitter_p50_ms/jitter_p99_ms are nearest-rank over trains.
-- trains_with_loss counts trains with lost > 0; failed counts trains with ok = false (no reply).
-- Columns: src_region, dst_region, protocol, trains, failed, trains_with_loss, sent, lost,
--   loss_ratio, duplicates, reordered, late, jitter_avg_ms, jitter_p50_ms, jitter_p99_ms.
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
trains AS (
  SELECT d.*
  FROM dedup d
  WHERE d.kind = 'probe' AND d.protocol IN ('udp', 'quic')
),
jitter_ranked AS (
  SELECT t.src_region, t.dst_region, t.protocol, t.jitter_ms,
         row_number() OVER (PARTITION BY t.src_region, t.dst_region, t.protocol ORDER BY t.jitter_ms) AS rn,
         count(*) OVER (PARTITION BY t.src_region, t.dst_region, t.protocol) AS n
  FROM trains t
  WHERE t.jitter_ms IS NOT NULL
),
jitter AS (
  SELECT src_region, dst_region, protocol,
         max(CASE WHEN rn = CAST(ceil(0.5e0 * n) AS bigint) THEN jitter_ms END) AS jitter_p50_ms,
         max(CASE WHEN rn = CAST(ceil(0.99e0 * n) AS bigint) THEN jitter_ms END) AS jitter_p99_ms
  FROM jitter_ranked
  GROUP BY src_region, dst_region, protocol
),
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
       c.jitter_avg_ms, j.jitter_p50_ms, j.jitter_p99_ms
FROM counts c
LEFT JOIN jitter j
  ON j.src_region IS NOT DISTINCT FROM c.src_region AND j.dst_region IS NOT DISTINCT FROM c.dst_region AND j.protocol IS NOT DISTINCT FROM c.protocol
ORDER BY c.src_region, c.dst_region, c.protocol
