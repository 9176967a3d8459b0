-- Best relay per region pair: the relay agent with the lowest median relay penalty.
--
-- Same inputs and penalty definition as relay_penalty.sql (kind = 'relay', relay_penalty_ms =
-- relayed - direct, nearest-rank median over the group's trains). Ties go to the relay with more
-- trains, then the smaller relay_agent id. beats_direct is true when that median is below 0.
-- relays_tried counts the relay agents measured for the pair.
-- Columns: src_region, dst_region, best_relay_agent, best_relay_region, penalty_p50_ms,
--   penalty_avg_ms, trains, beats_direct, relays_tried.
-- #include include/prelude.sql
-- #include include/relay_stats.sql
chosen AS (
  SELECT pr.*,
         row_number() OVER (PARTITION BY pr.src_region, pr.dst_region
                            ORDER BY pr.penalty_p50_ms, pr.trains DESC, pr.relay_agent) AS choice,
         count(*) OVER (PARTITION BY pr.src_region, pr.dst_region) AS relays_tried
  FROM per_relay pr
)
SELECT src_region,
       dst_region,
       relay_agent AS best_relay_agent,
       relay_region AS best_relay_region,
       penalty_p50_ms,
       penalty_avg_ms,
       trains,
       penalty_p50_ms < 0 AS beats_direct,
       relays_tried
FROM chosen
WHERE choice = 1
ORDER BY src_region, dst_region
