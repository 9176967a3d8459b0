-- The shared prelude of every shipped query (infra/athena/*.sql except the DDL records_table.sql):
-- each query has the line `-- #include include/prelude.sql` where this text goes, and
-- scripts/athena-local and scripts/gen_infra.py (the named queries of
-- infra/cloudformation/analytics.yaml) put it there (scripts/lib/athena_sql.py). It opens the
-- WITH clause with the CTEs `in_range` (the time range) and `dedup` (one copy per record_id) and
-- ends with a comma: the query's own CTEs follow.

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
