#!/usr/bin/env python3
"""Checks that the Athena DDL and the CloudFormation Glue table agree with the record field table.

    scripts/check_schema.py               # exit 0 if all agree, 1 naming every mismatch
    scripts/check_schema.py --print ddl   # print the DDL column block generated from the table

Source of truth: the `fields! { name: Type = "meaning", ... }` table in proto/src/record.rs
(`FIELDS`), parsed by scripts/lib/meshlat_fields.py. Checked against it:
  1. FieldType::athena() in record.rs maps each type as meshlat_fields.ATHENA_TYPES does;
  2. infra/athena/records_table.sql: the CREATE EXTERNAL TABLE columns (name, order, type,
     COMMENT = meaning) and the partitions region, dt, hour (string);
  3. infra/cloudformation/analytics.yaml: the RecordsTable (AWS::Glue::Table) Columns (Name,
     order, Type, Comment) and PartitionKeys.
Runs inside .venv-analytics (PyYAML for the template), creating it on first use.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
import pyvenv  # noqa: E402

pyvenv.reexec_in(pyvenv.ANALYTICS)

import yaml  # noqa: E402
from cfn_yaml import CfnLoader  # noqa: E402

import meshlat_fields as mf  # noqa: E402

ROOT = mf.ROOT
DDL = ROOT / "infra" / "athena" / "records_table.sql"
CFN = ROOT / "infra" / "cloudformation" / "analytics.yaml"

Column = tuple[str, str, str]  # name, type, comment


def compare(what: str, expected: list[Column], actual: list[Column], errors: list[str]) -> None:
    exp_names = [c[0] for c in expected]
    act_names = [c[0] for c in actual]
    missing = [n for n in exp_names if n not in act_names]
    extra = [n for n in act_names if n not in exp_names]
    if missing:
        errors.append(f"{what}: missing columns: {', '.join(missing)}")
    if extra:
        errors.append(f"{what}: columns not in the field table: {', '.join(extra)}")
    common_exp = [n for n in exp_names if n in act_names]
    common_act = [n for n in act_names if n in exp_names]
    if common_exp != common_act:
        for i, (e, a) in enumerate(zip(common_exp, common_act)):
            if e != a:
                errors.append(f"{what}: column order differs from the field table at position {i + 1}: "
                              f"expected {e}, found {a}")
                break
    act = {c[0]: c for c in actual}
    for name, ty, comment in expected:
        if name not in act:
            continue
        _, aty, acomment = act[name]
        if aty.replace(" ", "").lower() != ty:
            errors.append(f"{what}: column {name} has type {aty}, field table says {ty}")
        if acomment is not None and acomment != comment:
            errors.append(f"{what}: column {name} comment {acomment!r} differs from the field table's {comment!r}")


def check_rust_type_map(errors: list[str]) -> None:
    text = mf.RECORD_RS.read_text()
    found = dict(re.findall(r'FieldType::(\w+)\s*=>\s*"([^"]+)"', text))
    if found != mf.ATHENA_TYPES:
        errors.append(f"{mf.RECORD_RS.relative_to(ROOT)}: FieldType::athena() {found} differs from "
                      f"scripts/lib/meshlat_fields.py ATHENA_TYPES {mf.ATHENA_TYPES}")


_DDL_COL = re.compile(r"`(?P<name>[^`]+)`\s+(?P<ty>[a-z]+(?:<[a-z ]+>)?)(?:\s+COMMENT\s+'(?P<c>(?:[^']|'')*)')?\s*,?")


def ddl_columns(block: str, where: str, errors: list[str]) -> list[Column]:
    cols = []
    for line in block.strip().splitlines():
        s = line.strip()
        if not s or s.startswith("--"):
            continue
        m = _DDL_COL.fullmatch(s)
        if not m:
            errors.append(f"{where}: cannot parse column line {s!r}")
            continue
        c = m.group("c")
        cols.append((m.group("name"), m.group("ty"), c.replace("''", "'") if c is not None else None))
    return cols


def check_ddl(expected: list[Column], errors: list[str]) -> None:
    rel = DDL.relative_to(ROOT)
    text = "\n".join(line for line in DDL.read_text().splitlines() if not line.lstrip().startswith("--"))
    m = re.search(r"CREATE\s+EXTERNAL\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?\S+\s*\((?P<cols>.*?)\n\)\s*\n"
                  r"PARTITIONED\s+BY\s*\((?P<parts>.*?)\n\)", text, re.S | re.I)
    if not m:
        errors.append(f"{rel}: no CREATE EXTERNAL TABLE ... ( columns ) PARTITIONED BY ( ... ) found")
        return
    compare(str(rel), expected, ddl_columns(m.group("cols"), str(rel), errors), errors)
    parts = [(n, t) for n, t, _ in ddl_columns(m.group("parts"), str(rel), errors)]
    if parts != mf.PARTITIONS:
        errors.append(f"{rel}: partitions {parts} differ from {mf.PARTITIONS}")
    template = re.search(r"'storage\.location\.template'\s*=\s*'([^']*)'", text)
    if not template or not template.group(1).endswith("/records/region=${region}/dt=${dt}/hour=${hour}/"):
        errors.append(f"{rel}: storage.location.template must end records/region=${{region}}/dt=${{dt}}/hour=${{hour}}/")


def check_cfn(expected: list[Column], errors: list[str]) -> None:
    rel = CFN.relative_to(ROOT)
    try:
        doc = yaml.load(CFN.read_text(), Loader=CfnLoader)
    except yaml.YAMLError as e:
        errors.append(f"{rel}: not valid YAML: {e}")
        return
    tables = {k: v for k, v in (doc.get("Resources") or {}).items() if v.get("Type") == "AWS::Glue::Table"}
    if list(tables) != ["RecordsTable"]:
        errors.append(f"{rel}: expected exactly one AWS::Glue::Table named RecordsTable, found {list(tables)}")
        if "RecordsTable" not in tables:
            return
    ti = tables["RecordsTable"]["Properties"]["TableInput"]
    cols = [(c.get("Name"), c.get("Type"), c.get("Comment")) for c in ti["StorageDescriptor"].get("Columns") or []]
    compare(f"{rel} RecordsTable", expected, cols, errors)
    parts = [(p.get("Name"), p.get("Type")) for p in ti.get("PartitionKeys") or []]
    if parts != mf.PARTITIONS:
        errors.append(f"{rel} RecordsTable: partitions {parts} differ from {mf.PARTITIONS}")


def main(argv: list[str]) -> int:
    try:
        fields = mf.parse_fields()
    except mf.FieldTableError as e:
        print(f"check_schema: {e}")
        return 1
    if argv[:1] == ["--print"]:
        print(mf.ddl_column_lines(fields))
        return 0
    expected = [(f.name, f.athena_type, f.meaning) for f in fields]
    errors: list[str] = []
    check_rust_type_map(errors)
    check_ddl(expected, errors)
    check_cfn(expected, errors)
    for e in errors:
        print(f"check_schema: MISMATCH {e}")
    if errors:
        print(f"check_schema: {len(errors)} mismatch(es) against the field table of {mf.RECORD_RS.relative_to(ROOT)}")
        return 1
    print(f"check_schema: ok ({len(fields)} columns; DDL and Glue table agree with {mf.RECORD_RS.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
