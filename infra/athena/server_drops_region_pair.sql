-- Server-side drops per region pair: what responders (kind = 'serve': the UDP reflector and the
-- TCP, QUIC, HTTP and HTTPS responders) and relays (kind = 'relay_serve') refused, by source
-- region, server region, protocol and reason.
--
-- Servers write one record per interval, source and outcome (DESIGN §8; the agent's
-- respond::tally): `packets`/`bytes` answered or relayed (drop_reason null), or dropped with
-- `drop_reason` = malformed, oversize, version, type, auth, relay_no_grant, relay_expired,
-- relay_bad_grant, relay_table_full, relay_size or send_error (UDP); refused_total_cap,
-- refused_per_ip_cap, handshake_failed, handshake_timeout, bad_request, timeout, io or
-- send_error (tcp, quic, http, https, whose `packets` count connections, handshakes or
-- requests: so every total here is per protocol).
-- src_region is the source agent's region when the server could name it: the packets
-- authenticated (UDP) or came over a completed TCP or QUIC handshake, and their source address
-- is a single agent the server knows from its own jobs; otherwise '(unknown)' — always so for UDP
-- drops before authentication (malformed, auth, ...) and refused or failed QUIC handshakes,
-- whose only evidence is the source address. server_region is the reflector's region (dst_region)
-- or the relay's (relay_region).
-- Columns: src_region, server_region, kind, protocol, drop_reason, packets, bytes, source_addrs
--   (distinct source addresses; the overflow row of sources beyond --serve-max-sources has
--   none), records, drop_share (packets / everything the servers of this pair, kind and
--   protocol counted, answered or dropped).
-- Time range (every shipped query):
--   params: from, to
--   '${from}'  inclusive, '${to}' exclusive: UTC instants written exactly like `ts`,
--              YYYY-MM-DDTHH:MM:SS.ffffffZ (e.g. 2024-05-01T00:00:00.000000Z), so that string
--              comparison with `ts` is time comparison. scripts/athena-local --from/--to
--              normalises any ISO 8601 time to that form and substitutes it; in Athena the named
--              queries of infra/cloudformation/analytics.yaml replace them with the last 24 hours.
--   Records are selected by `ts`, here the start of the counting interval. Partitions (dt = UTC
--   *arrival* date) are pruned to [date(from) - 1 day, date(to) + 2 days].
-- Deduplication: Firehose delivery is at least once; a record delivered twice has the same
--   record_id, and only the first copy (row_number() = 1 over record_id) is counted.

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
server AS (
  SELECT d.kind,
         d.protocol,
         coalesce(d.src_region, '(unknown)') AS src_region,
         coalesce(CASE WHEN d.kind = 'relay_serve' THEN d.relay_region ELSE d.dst_region END, '(unknown)') AS server_region,
         d.drop_reason,
         d.packets,
         d.bytes,
         d.src_addr
  FROM dedup d
  WHERE d.kind IN ('serve', 'relay_serve')
),
totals AS (
  SELECT src_region, server_region, kind, protocol, sum(packets) AS all_packets
  FROM server
  GROUP BY src_region, server_region, kind, protocol
),
drops AS (
  SELECT src_region, server_region, kind, protocol, drop_reason,
         sum(packets) AS packets,
         sum(bytes) AS bytes,
         count(DISTINCT src_addr) AS source_addrs,
         count(*) AS records
  FROM server
  WHERE drop_reason IS NOT NULL
  GROUP BY src_region, server_region, kind, protocol, drop_reason
)
SELECT d.src_region, d.server_region, d.kind, d.protocol, d.drop_reason, d.packets, d.bytes, d.source_addrs,
       d.records,
       CAST(d.packets AS double) / nullif(t.all_packets, 0) AS drop_share
FROM drops d
JOIN totals t
  ON t.src_region = d.src_region AND t.server_region = d.server_region AND t.kind = d.kind
     AND t.protocol = d.protocol
ORDER BY d.src_region, d.server_region, d.kind, d.protocol, d.packets DESC, d.drop_reason
