-- The RTT samples of probe records, shared by the latency matrices and the time series:
-- included after a CTE `probes` (kind = 'probe' records with a `dst_key` column) as
-- `-- #include include/rtt_samples.sql group=COL,COL,...`, where the group columns (columns of
-- `probes`, e.g. src_region,dst_key,protocol) replace {{group}}. Defines `samples` (the group
-- columns and sample_ms, one row per RTT value) and ends with a comma; include/percentiles.sql
-- with the same group usually follows.

-- RTT samples: udp/quic trains contribute every element of rtt_samples_ms (per-packet RTT); tcp
-- contributes rtt_ms (= connect time) and http/https total_ms (connect start -> last byte), one
-- per successful record.
samples AS (
  SELECT {{group}}, s.sample_ms
  FROM probes p
  CROSS JOIN UNNEST(p.rtt_samples_ms) AS s (sample_ms)
  WHERE p.protocol IN ('udp', 'quic')
  UNION ALL
  SELECT {{group}},
         CASE WHEN p.protocol = 'tcp' THEN p.rtt_ms ELSE p.total_ms END AS sample_ms
  FROM probes p
  WHERE p.protocol IN ('tcp', 'http', 'https')
    AND p.ok
    AND (CASE WHEN p.protocol = 'tcp' THEN p.rtt_ms ELSE p.total_ms END) IS NOT NULL
),
