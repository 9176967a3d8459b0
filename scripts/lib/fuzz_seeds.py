#!/usr/bin/env python3
"""Writes the committed seed corpus of the fuzz targets (proto/fuzz/corpus, agent/fuzz/corpus).

Seeds are small valid inputs, so the fuzzer starts past the format's first checks (magic, version,
protobuf structure) instead of discovering them by chance. Re-run after a format change (a new
wire or grant version): `python3 scripts/lib/fuzz_seeds.py`. Crash inputs found by fuzzing are
committed beside these by hand (named crash-*), as regression seeds, and never removed.
"""
import os
import re
import struct

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def put(crate, target, name, data):
    d = os.path.join(root, crate, "fuzz", "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# --- protobuf, by hand (field numbers from proto/meshlat/v1/*.proto) ---
def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def fv(num, n):  # varint field
    return varint(num << 3) + varint(n)


def fb(num, data):  # length-delimited field
    if isinstance(data, str):
        data = data.encode()
    return varint(num << 3 | 2) + varint(len(data)) + data


def endpoint_selector(s):
    return fb(2, s)


def job_spec(k=0, strategy=1, protocols=(1, 2), targets=("region=eu-west-1",)):
    b = fb(1, "mesh") + fv(2, 1)
    for p in protocols:
        b += fv(3, p)
    b += fb(4, endpoint_selector("region=eu-west-1"))
    for t in targets:
        b += fb(5, endpoint_selector(t) if "=" in t else fb(3, t))
    b += fv(7, 1000) + fv(8, 500) + fv(10, 10) + fv(14, strategy)
    if k:
        b += fv(15, k)
    return b


def job(spec, jid="01a23556-f5f4-75e2-b9a9-5c8552a34d6f"):
    return fb(1, jid) + fb(2, spec) + fv(3, 1) + fv(4, 1796191221236)


put("proto", "job_spec_proto", "full", job_spec())
put("proto", "job_spec_proto", "k_random", job_spec(k=3, strategy=3))
put("proto", "job_spec_proto", "k_huge", job_spec(k=4294967295, strategy=3))
put("proto", "job_spec_proto", "url_target", job_spec(targets=("https://example.com/",)))
put("proto", "job_spec_proto", "stored_jobs", fb(1, job(job_spec())) + fb(1, job(job_spec(k=2, strategy=3))))

hello = fb(1, "01a23556-e354-74ca-b044-81483dac9181") + fb(2, "eu-west-1") + fb(3, "eu-west-1a")
hello += fb(5, fv(1, 1) + fb(2, "10.0.0.7:7710")) + fb(6, "udp") + fb(6, "relay-udp") + fb(7, "0.1.0")
put("proto", "agent_message", "hello", fb(1, hello))
put("proto", "agent_message", "heartbeat", fb(2, fv(1, 1796191221236) + fv(2, 3)))
put("proto", "agent_message", "ack", fb(3, fv(1, 3) + fb(2, fb(1, "job-1") + fb(2, "refused"))))
pair = fb(1, "job-1") + fb(2, "udp") + fb(3, "ag-2") + fb(4, "udp://10.0.0.8:7710")
pair += varint(5 << 3 | 1) + struct.pack("<d", 70.2) + varint(6 << 3 | 1) + struct.pack("<d", 71.5)
pair += fv(7, 100) + fv(8, 1) + fv(9, 99) + fv(10, 1796191221236)
put("proto", "agent_message", "summaries", fb(4, fb(1, pair) + fb(1, pair)))

agent_info = fb(1, "ag-1") + fb(2, "eu-west-1")
directory = fb(1, "eu-west-1") + fb(2, "https://10.0.0.1:7400") + fb(3, agent_info)
directory += fb(4, job(job_spec())) + fv(5, 30000) + fv(6, 1796191221236)
put("proto", "federation_directory", "directory", directory)

put("proto", "join_token", "valid", "mlt1." + "b7" * 32 + "." + "0123456789abcdef" * 4)
put("proto", "join_token", "short_secret", "mlt1." + "b7" * 32 + ".abcd")

grant_src = open(os.path.join(root, "proto/src/grant.rs")).read()
gver = int(re.search(r"pub const GRANT_VERSION: u8 = (\d+);", grant_src).group(1))
gbytes = int(re.search(r"pub const GRANT_BYTES: usize = (\d+);", grant_src).group(1))
grant4 = bytes([gver, 4]) + struct.pack(">H", 7710) + bytes([10, 0, 0, 7]) + bytes(12)
grant4 += struct.pack(">Q", 1_800_000_000) + struct.pack(">I", 0x01020304)
grant4 += bytes(gbytes - len(grant4))
put("proto", "grant_verify", "v4", grant4)
grant6 = bytes([gver, 6]) + struct.pack(">H", 7710) + bytes(15) + b"\x01"
grant6 += struct.pack(">Q", 1_800_000_000) + struct.pack(">I", 0x01020304)
grant6 += bytes(gbytes - len(grant6))
put("proto", "grant_verify", "v6", grant6)

# --- UDP wire (agent/src/udp/wire.rs) ---
wire_src = open(os.path.join(root, "agent/src/udp/wire.rs")).read()
magic = re.search(r'pub const MAGIC: \[u8; 4\] = \*b"(\w{4})";', wire_src).group(1).encode()
version = int(re.search(r"pub const VERSION: u8 = (\d+);", wire_src).group(1))
header = int(re.search(r"pub const HEADER_BYTES: usize = (\d+);", wire_src).group(1))
mac = int(re.search(r"pub const MAC_BYTES: usize = (\d+);", wire_src).group(1))
off_grant = int(re.search(r"const OFF_GRANT: usize = (\d+);", wire_src).group(1))


def packet(msg_type, size, grant=b""):
    h = bytearray(size)
    h[0:4] = magic
    h[4] = version
    h[5] = msg_type
    struct.pack_into(">I", h, 8, 0x11223344)
    struct.pack_into(">Q", h, 12, 0xDEADBEEF)
    struct.pack_into(">I", h, 20, 7)
    struct.pack_into(">Q", h, 32, 1_000_000)
    if grant:
        h[off_grant:off_grant + len(grant)] = grant
    return bytes(h)


put("agent", "udp_wire", "request_min", packet(1, header + mac))
put("agent", "udp_wire", "request_1452", packet(1, 1452))
put("agent", "udp_wire", "reply", packet(2, header + mac + 32))
put("agent", "udp_wire", "relay_forward", packet(3, header + mac + 64, grant4))
put("agent", "udp_wire", "relay_return", packet(4, header + mac))

# --- spool batch (agent/src/sink/firehose/spool.rs) ---
recs = [b'{"a":1}\n{"a":2}\n', b'{"b":3}\n']
batch = b"MLFHSP01" + struct.pack("<Q", 3) + struct.pack("<I", len(recs))
for r in recs:
    batch += struct.pack("<I", len(r)) + r
put("agent", "spool_batch", "valid", batch)
put("agent", "spool_batch", "truncated", batch[:-5])
put("agent", "spool_batch", "huge_count", b"MLFHSP01" + struct.pack("<Q", 1) + struct.pack("<I", 0xFFFFFFFF))
print("fuzz seeds written under proto/fuzz/corpus and agent/fuzz/corpus")
