"""The record field table of meshlat-proto, read from its Rust source (stdlib only).

`proto/src/record.rs` holds the machine-readable field table as a macro invocation:

    fields! {
        record_id: String = "UUID v7 set when measured; deduplication key",
        ...
    }

`parse_fields()` returns it as a list of `Field(name, ty, meaning)` in table order, where `ty` is
the Rust `FieldType` variant name. The maps below give the Athena/Glue (Hive DDL) type, which must
equal `FieldType::athena()` in record.rs, and the DuckDB type `scripts/athena-local` declares so
that all-null columns still get their real type.

Used by scripts/check_schema.py and scripts/athena-local.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECORD_RS = ROOT / "proto" / "src" / "record.rs"

# FieldType variant -> Athena/Hive DDL type (FieldType::athena() in record.rs).
ATHENA_TYPES = {
    "String": "string",
    "Int": "int",
    "BigInt": "bigint",
    "Double": "double",
    "Boolean": "boolean",
    "DoubleArray": "array<double>",
}

# FieldType variant -> DuckDB type used by scripts/athena-local.
DUCKDB_TYPES = {
    "String": "VARCHAR",
    "Int": "INTEGER",
    "BigInt": "BIGINT",
    "Double": "DOUBLE",
    "Boolean": "BOOLEAN",
    "DoubleArray": "DOUBLE[]",
}

# Partition keys, in order, as Firehose and the file sink write them (all strings).
PARTITIONS = [("region", "string"), ("dt", "string"), ("hour", "string")]


@dataclass(frozen=True)
class Field:
    name: str
    ty: str
    meaning: str

    @property
    def athena_type(self) -> str:
        return ATHENA_TYPES[self.ty]

    @property
    def duckdb_type(self) -> str:
        return DUCKDB_TYPES[self.ty]


class FieldTableError(Exception):
    """The field table could not be read."""


_BLOCK = re.compile(r"^fields!\s*\{(?P<body>.*?)^\}", re.S | re.M)
_ENTRY = re.compile(r'(?P<name>[a-z_][a-z0-9_]*)\s*:\s*(?P<ty>[A-Za-z]+)\s*=\s*"(?P<meaning>(?:[^"\\]|\\.)*)"\s*,?')


def parse_fields(path: Path = RECORD_RS) -> list[Field]:
    """Parses the `fields! { ... }` invocation (not the macro definition) in `path`."""
    try:
        text = path.read_text()
    except OSError as e:
        raise FieldTableError(f"cannot read {path}: {e}") from e
    m = _BLOCK.search(text)
    if not m:
        raise FieldTableError(f"no `fields! {{ ... }}` block at the start of a line in {path}")
    body = m.group("body")
    fields: list[Field] = []
    for line_no, line in enumerate(body.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("//"):
            continue
        e = _ENTRY.fullmatch(s)
        if not e:
            raise FieldTableError(f"{path}: cannot parse field table line: {s!r}")
        if e.group("ty") not in ATHENA_TYPES:
            raise FieldTableError(f"{path}: field {e.group('name')} has unknown type {e.group('ty')}")
        meaning = e.group("meaning").encode().decode("unicode_escape")
        fields.append(Field(e.group("name"), e.group("ty"), meaning))
    if not fields:
        raise FieldTableError(f"{path}: empty field table")
    names = [f.name for f in fields]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise FieldTableError(f"{path}: duplicate fields in table: {', '.join(dups)}")
    return fields


def ddl_column_lines(fields: list[Field]) -> str:
    """The DDL column list exactly as `athena_columns()` in record.rs renders it."""
    return ",\n".join(
        f"  `{f.name}` {f.athena_type} COMMENT '{f.meaning.replace(chr(39), chr(39) * 2)}'" for f in fields
    )
