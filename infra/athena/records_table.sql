-- meshlat records table: Glue/Athena DDL for the NDJSON records Firehose (and the agent's file sink)
-- write under s3://<bucket>/records/region=<region>/dt=YYYY-MM-DD/hour=HH/ (DESIGN §5).
--
-- Columns: exactly the field table `FIELDS` in proto/src/record.rs, in order, with the types of
-- `FieldType::athena()` and the meanings as comments (the text of `athena_columns()`).
-- scripts/check_schema.py fails when this file, infra/cloudformation/analytics.yaml's Glue table
-- and the field table disagree; `scripts/check_schema.py --print ddl` prints the column block.
--
-- Partitions: region, dt, hour (strings, as in the S3 keys). They are *projected* (no crawler, no
-- MSCK REPAIR, no ALTER TABLE ADD PARTITION):
--   region  enum     the mesh's regions, comma separated. Not `injected`: injected keys require an
--                    equality predicate on region in every query, and the shipped SQL compares
--                    regions. Adding a region means updating this list (the CloudFormation
--                    parameter `Regions` of infra/cloudformation/analytics.yaml).
--   dt      date     yyyy-MM-dd, from 2024-01-01 to NOW (UTC arrival date)
--   hour    integer  00..23, two digits
--
-- Placeholders to substitute before running this file by hand (CloudFormation creates the same
-- table from its parameters, so a deployed stack needs none of this):
--   ${bucket}   the central records bucket, e.g. meshlat-records-123456789012
--   ${regions}  e.g. eu-west-1,us-east-1,af-south-1
-- e.g.  sed -e 's/[$]{bucket}/my-bucket/; s/[$]{regions}/eu-west-1,us-east-1/' infra/athena/records_table.sql
-- The ${region}, ${dt} and ${hour} inside storage.location.template are Athena's own projection
-- variables and stay as they are.
--
-- The JSON SerDe maps keys to columns by name; null or missing keys read as NULL. Malformed lines
-- make queries fail rather than being skipped silently (ignore.malformed.json = false).
-- With Parquet conversion enabled in Firehose (RecordFormat=parquet), the CloudFormation table
-- uses the Parquet SerDe instead; columns and partitions are the same.

CREATE EXTERNAL TABLE IF NOT EXISTS records (
  `record_id` string COMMENT 'UUID v7 set when measured; deduplication key',
  `schema_version` int COMMENT 'record schema version (1)',
  `ts` string COMMENT 'sample or train start, RFC 3339 UTC with microseconds',
  `job_id` string COMMENT 'job that produced the record (''standalone'' for agent probe)',
  `kind` string COMMENT 'probe, relay, serve (reflector counts), relay_serve (relay counts) or load (one second of a load job)',
  `protocol` string COMMENT 'udp, tcp, quic, http or https',
  `src_agent` string COMMENT 'measuring agent id',
  `src_region` string COMMENT 'measuring agent region',
  `src_az` string COMMENT 'measuring agent availability zone',
  `src_location` string COMMENT 'measuring agent location label',
  `dst_agent` string COMMENT 'target agent id (null for external targets)',
  `dst_region` string COMMENT 'target agent region',
  `dst_az` string COMMENT 'target agent availability zone',
  `dst_location` string COMMENT 'target agent location label',
  `target` string COMMENT 'URL or proto://host:port probed',
  `relay_agent` string COMMENT 'relay agent id (relay records)',
  `relay_region` string COMMENT 'relay agent region',
  `relay_az` string COMMENT 'relay agent availability zone',
  `relay_location` string COMMENT 'relay agent location label',
  `seq` bigint COMMENT 'sample or train number for this job and target, from 0',
  `control_mode` string COMMENT 'standalone, connected, static or degraded',
  `sched_lag_ms` double COMMENT 'how late the agent started this sample against its schedule',
  `agent_version` string COMMENT 'agent version',
  `ok` boolean COMMENT 'measurement succeeded (trains: at least one reply)',
  `error_kind` string COMMENT 'dns, refused, timeout, tls, http, auth, local, reset, unreachable, protocol, loss',
  `error` string COMMENT 'failure detail',
  `sent` int COMMENT 'packets sent in the train',
  `samples` int COMMENT 'distinct sequences answered within the timeout',
  `lost` int COMMENT 'sent minus samples',
  `duplicates` int COMMENT 'replies to an already answered sequence',
  `reordered` int COMMENT 'replies arriving after a reply to a later sequence',
  `late` int COMMENT 'replies after the timeout',
  `rtt_ms` double COMMENT 'mean per-packet RTT (tcp: connect time)',
  `rtt_min_ms` double COMMENT 'minimum per-packet RTT',
  `rtt_p50_ms` double COMMENT 'median per-packet RTT, nearest rank',
  `rtt_p99_ms` double COMMENT '99th percentile per-packet RTT, nearest rank',
  `rtt_max_ms` double COMMENT 'maximum per-packet RTT',
  `rtt_samples_ms` array<double> COMMENT 'every per-packet RTT of the train',
  `jitter_ms` double COMMENT 'RFC 3550 jitter over forward transit, per train',
  `clock_offset_ms` double COMMENT 'remote minus local clock, from the lowest-RTT packet',
  `owd_fwd_ms` double COMMENT 'forward one-way delay (only with clock error bounds)',
  `owd_rev_ms` double COMMENT 'reverse one-way delay (only with clock error bounds)',
  `clock_error_ms` double COMMENT 'sum of both clocks'' error bounds',
  `dns_ms` double COMMENT 'DNS resolution time',
  `tcp_ms` double COMMENT 'TCP handshake: kernel SYN to SYN-ACK RTT, or connect start to connected (see tcp_time_source)',
  `tls_ms` double COMMENT 'connected to TLS handshake done',
  `first_byte_ms` double COMMENT 'request written to first response byte',
  `last_byte_ms` double COMMENT 'first to last body byte',
  `total_ms` double COMMENT 'connect start to last byte',
  `http_status` int COMMENT 'HTTP status (null on connection failure)',
  `bytes` bigint COMMENT 'response body size (serve/relay_serve: bytes of the row''s packets, datagrams echoed or response bodies)',
  `remote_addr` string COMMENT 'address connected to',
  `http_version` string COMMENT 'HTTP version',
  `tls_version` string COMMENT 'TLS version',
  `handshake_ms` double COMMENT 'QUIC handshake time',
  `leg_src_relay_rtt_ms` double COMMENT 'source to relay round trip, (a4-a1)-(r4-r1)',
  `leg_relay_dst_rtt_ms` double COMMENT 'relay to destination round trip, (r3-r2)-(b2-b1)',
  `relay_dwell_ms` double COMMENT 'time inside the relay, (r2-r1)+(r4-r3)',
  `direct_rtt_ms` double COMMENT 'RTT of the interleaved direct probe',
  `relay_penalty_ms` double COMMENT 'median of per-pair (relayed - direct)',
  `interval_ms` double COMMENT 'serve/relay_serve: length of the counting interval starting at ts',
  `src_addr` string COMMENT 'serve/relay_serve: source IP address (null: the overflow bucket of sources beyond the per-interval limit)',
  `key_id` string COMMENT 'serve/relay_serve: wire key id the packets authenticated with (null: dropped before authentication)',
  `packets` bigint COMMENT 'serve/relay_serve: packets answered, forwarded or (with drop_reason) dropped; tcp/quic/http(s) serve: connections accepted, handshakes completed, requests answered or (with drop_reason) refused/failed',
  `returned` bigint COMMENT 'relay_serve: replies relayed back to the source; quic serve: datagrams echoed',
  `drop_reason` string COMMENT 'serve/relay_serve: why the packets were dropped (null: answered or relayed)',
  `send_lag_ms` double COMMENT 'trains: worst lateness of a packet''s send against its paced due time',
  `lag_suspect` boolean COMMENT 'the agent''s own lateness (worse of sched_lag_ms and send_lag_ms) exceeded 2 ms and half the measured RTT: timings may carry the agent''s load',
  `tcp_time_source` string COMMENT 'where tcp_ms comes from: kernel (TCP_INFO handshake RTT) or user (process clock around connect)',
  `load_step` int COMMENT 'load: step of the job''s schedule at the end of the second, from 0',
  `load_workers` int COMMENT 'load: workers (closed model) or open connections (open model) at the end of the second',
  `load_level` double COMMENT 'load: configured level, workers (closed) or req/s (open)',
  `intended_rps` double COMMENT 'load: requests per second the schedule intended (closed: equal to sent)',
  `achieved_rps` double COMMENT 'load: responses (any status) per second',
  `requests` bigint COMMENT 'load: requests sent in the second',
  `status_2xx` bigint COMMENT 'load: responses 200-299',
  `status_3xx` bigint COMMENT 'load: responses 300-399 (redirects not followed)',
  `status_4xx` bigint COMMENT 'load: responses 400-499 except 429',
  `status_429` bigint COMMENT 'load: 429 Too Many Requests, the target''s rate limit (not a success)',
  `status_5xx` bigint COMMENT 'load: responses 500-599',
  `status_other` bigint COMMENT 'load: other statuses, or a status the request''s expect_status did not expect',
  `errors_connect` bigint COMMENT 'load: requests that failed to connect',
  `errors_timeout` bigint COMMENT 'load: requests with no complete response within the timeout',
  `errors_tls` bigint COMMENT 'load: requests whose TLS handshake failed',
  `errors_io` bigint COMMENT 'load: requests whose connection failed mid-request',
  `lat_p50_ms` double COMMENT 'load: median latency from the intended send time (coordinated-omission corrected)',
  `lat_p90_ms` double COMMENT 'load: 90th percentile latency, corrected',
  `lat_p99_ms` double COMMENT 'load: 99th percentile latency, corrected',
  `lat_p999_ms` double COMMENT 'load: 99.9th percentile latency, corrected',
  `lat_max_ms` double COMMENT 'load: largest latency, corrected',
  `uncorrected_p50_ms` double COMMENT 'load: median latency from the actual send (uncorrected)',
  `uncorrected_p99_ms` double COMMENT 'load: 99th percentile latency, uncorrected',
  `uncorrected_max_ms` double COMMENT 'load: largest latency, uncorrected',
  `lat_hist_ms` array<double> COMMENT 'load: corrected latency histogram, each non-empty bucket''s value (ms, ascending, within 0.5 percent)',
  `lat_hist_counts` array<double> COMMENT 'load: count of each bucket of lat_hist_ms, same order (sum per bucket value to merge)'
)
PARTITIONED BY (
  `region` string COMMENT 'region of the writing agent (Firehose stream prefix / file sink directory)',
  `dt` string COMMENT 'UTC date the record was written, yyyy-MM-dd',
  `hour` string COMMENT 'UTC hour the record was written, 00-23'
)
ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'
WITH SERDEPROPERTIES (
  'ignore.malformed.json' = 'false'
)
STORED AS INPUTFORMAT 'org.apache.hadoop.mapred.TextInputFormat'
OUTPUTFORMAT 'org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat'
LOCATION 's3://${bucket}/records/'
TBLPROPERTIES (
  'classification' = 'json',
  'projection.enabled' = 'true',
  'projection.region.type' = 'enum',
  'projection.region.values' = '${regions}',
  'projection.dt.type' = 'date',
  'projection.dt.format' = 'yyyy-MM-dd',
  'projection.dt.range' = '2024-01-01,NOW',
  'projection.dt.interval' = '1',
  'projection.dt.interval.unit' = 'DAYS',
  'projection.hour.type' = 'integer',
  'projection.hour.range' = '0,23',
  'projection.hour.digits' = '2',
  'storage.location.template' = 's3://${bucket}/records/region=${region}/dt=${dt}/hour=${hour}/'
);
