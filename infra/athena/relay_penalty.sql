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
-- #include include/prelude.sql
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
