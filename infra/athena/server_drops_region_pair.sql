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
-- Time range: `ts` of a server record is the start of its counting interval.
-- #include include/prelude.sql
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
