-- Relay penalty per (src_region, dst_region, relay): what going through a relay costs vs the direct path.
--
-- From kind = 'relay' records that have relay_penalty_ms (the agent's median of per-packet-pair
-- differences, relayed - direct, within one train). Negative = the relay beats the direct path.
-- penalty_p50_ms / penalty_p99_ms are nearest rank over the records (trains) of the group;
-- penalty_avg_ms their mean. The leg, dwell, relayed (rtt_ms) and direct RTTs are train means
-- averaged over the group. loss_ratio = sum(lost) / sum(sent) of the relayed trains.
-- Columns: src_region, dst_region, relay_agent, relay_region, trains, penalty_p50_ms,
--   penalty_p99_ms, penalty_avg_ms, relayed_rtt_avg_ms, direct_rtt_avg_ms, leg_src_relay_avg_ms,
--   leg_relay_dst_avg_ms, relay_dwell_avg_ms, loss_ratio.
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
relayed AS (
  SELECT d.*
  FROM dedup d
  WHERE d.kind = 'relay' AND d.relay_penalty_ms IS NOT NULL
),
ranked AS (
  SELECT r.*,
         row_number() OVER (PARTITION BY r.src_region, r.dst_region, r.relay_agent ORDER BY r.relay_penalty_ms) AS rn,
         count(*) OVER (PARTITION BY r.src_region, r.dst_region, r.relay_agent) AS n
  FROM relayed r
)
SELECT src_region,
       dst_region,
       relay_agent,
       max(relay_region) AS relay_region,
       count(*) AS trains,
       max(CASE WHEN rn = CAST(ceil(0.5e0 * n) AS bigint) THEN relay_penalty_ms END) AS penalty_p50_ms,
       max(CASE WHEN rn = CAST(ceil(0.99e0 * n) AS bigint) THEN relay_penalty_ms END) AS penalty_p99_ms,
       avg(relay_penalty_ms) AS penalty_avg_ms,
       avg(rtt_ms) AS relayed_rtt_avg_ms,
       avg(direct_rtt_ms) AS direct_rtt_avg_ms,
       avg(leg_src_relay_rtt_ms) AS leg_src_relay_avg_ms,
       avg(leg_relay_dst_rtt_ms) AS leg_relay_dst_avg_ms,
       avg(relay_dwell_ms) AS relay_dwell_avg_ms,
       CAST(sum(lost) AS double) / nullif(sum(sent), 0) AS loss_ratio
FROM ranked
GROUP BY src_region, dst_region, relay_agent
ORDER BY src_region, dst_region, penalty_p50_ms, relay_agent
