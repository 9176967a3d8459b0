-- Relay penalty statistics per (src_region, dst_region, relay_agent), shared by
-- relay_penalty.sql and best_relay.sql: defines `relayed` (kind = 'relay' records with a
-- penalty), `ranked` (rn, n for nearest-rank percentiles) and `per_relay`, and ends with a comma.

-- relay_penalty_ms is the agent's median of per-packet-pair differences, relayed - direct, within
-- one train (negative: the relay beats the direct path). penalty_p50_ms / penalty_p99_ms are
-- nearest rank over the group's records (trains), penalty_avg_ms their mean; the leg, dwell,
-- relayed (rtt_ms) and direct RTTs are train means averaged over the group; loss_ratio =
-- sum(lost) / sum(sent) of the relayed trains.
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
),
per_relay AS (
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
),
