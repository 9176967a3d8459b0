-- Record, failure, loss and jitter counts of probe records per group, shared by the latency
-- matrices and the time series: included after a CTE `probes` as
-- `-- #include include/probe_counts.sql group=COL,COL,...` (columns of `probes`). Defines `counts`
-- (the group columns, records, failed, sent, lost, loss_ratio, jitter_avg_ms, and the group's
-- src_region_of / dst_region_of for groups keyed by agent) and ends with a comma.

-- loss_ratio = sum(lost) / sum(sent) over the group's trains (tcp/http/https records have no
-- sent/lost: they count in records and failed); jitter_avg_ms = mean of the per-train jitter_ms.
counts AS (
  SELECT {{group}},
         max(src_region) AS src_region_of,
         max(dst_region) AS dst_region_of,
         count(*) AS records,
         sum(CASE WHEN ok THEN 0 ELSE 1 END) AS failed,
         sum(sent) AS sent,
         sum(lost) AS lost,
         CAST(sum(lost) AS double) / nullif(sum(sent), 0) AS loss_ratio,
         avg(jitter_ms) AS jitter_avg_ms
  FROM probes
  GROUP BY {{group}}
),
