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
-- #include include/relay_stats.sql
SELECT src_region,
       dst_region,
       relay_agent,
       relay_region,
       trains,
       penalty_p50_ms,
       penalty_p99_ms,
       penalty_avg_ms,
       relayed_rtt_avg_ms,
       direct_rtt_avg_ms,
       leg_src_relay_avg_ms,
       leg_relay_dst_avg_ms,
       relay_dwell_avg_ms,
       loss_ratio
FROM per_relay
ORDER BY src_region, dst_region, penalty_p50_ms, relay_agent
