#!/usr/bin/env python3
"""Writes the generated sections of infra/cloudformation/analytics.yaml, or checks they are current.

    scripts/gen_infra.py           # rewrite the sections in place
    scripts/gen_infra.py --check   # exit 1 naming each stale section (used by scripts/test_analytics.py)

Sections (between "# BEGIN GENERATED: <name>" and "# END GENERATED: <name>" comment lines; the
indentation of the BEGIN line is the indentation of what is written):
  columns        the Glue table's Columns, from the field table in proto/src/record.rs
                 (Name, Type as FieldType::athena(), Comment = meaning)
  named queries  one AWS::Athena::NamedQuery per infra/athena/*.sql except records_table.sql,
                 the SQL inlined (with the files of infra/athena/include/ in place of its
                 `-- #include` lines) and '${from}' / '${to}' replaced by the last 24 hours
  quicksight sql the QuickSight data set's SqlQuery: timeseries_region_pair.sql over 7 days

Stdlib only (no virtualenv needed).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
import athena_sql  # noqa: E402
import meshlat_fields  # noqa: E402

ROOT = meshlat_fields.ROOT
TEMPLATE = ROOT / "infra" / "cloudformation" / "analytics.yaml"
ATHENA_DIR = ROOT / "infra" / "athena"

# What the time-range placeholders become in AWS (Trino expressions yielding ts's string form).
_TS_FORMAT = "'yyyy-MM-dd''T''HH:mm:ss.SSSSSS''Z'''"


def window(days: int) -> dict[str, str]:
    now = "current_timestamp AT TIME ZONE 'UTC'"
    return {
        "'${from}'": f"format_datetime({now} - INTERVAL '{days}' DAY, {_TS_FORMAT})",
        "'${to}'": f"format_datetime({now} + INTERVAL '1' MINUTE, {_TS_FORMAT})",
    }


def aws_sql(path: Path, days: int) -> str:
    out = [f"-- Generated from infra/athena/{path.name} by scripts/gen_infra.py: time range = the last "
           f"{days} day(s); edit the two format_datetime(...) bounds for another range."]
    try:
        text = athena_sql.load(path)
    except (OSError, athena_sql.IncludeError) as e:
        raise SystemExit(f"gen_infra: {e}")
    for line in text.rstrip().split("\n"):
        if not line.lstrip().startswith("--"):
            for k, v in window(days).items():
                line = line.replace(k, v)
            left = re.findall(r"\$\{[^}]*\}", line)
            if left:
                raise SystemExit(f"gen_infra: {path.name}: placeholders outside quotes or unknown: {left}")
        out.append(line)
    return "\n".join(out) + "\n"


def query_files() -> list[Path]:
    return sorted(p for p in ATHENA_DIR.glob("*.sql") if p.name != "records_table.sql")


def logical_id(path: Path) -> str:
    return "NamedQuery" + "".join(w.capitalize() for w in path.stem.split("_"))


def block(text: str, indent: str) -> list[str]:
    """A YAML literal block scalar body (`|-` follows the key)."""
    return [(indent + line).rstrip() for line in text.rstrip("\n").split("\n")]


def first_comment_line(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    return first.lstrip("-").strip()


def gen_columns(indent: str) -> list[str]:
    out = []
    for f in meshlat_fields.parse_fields():
        out.append(f"{indent}- Name: {f.name}")
        out.append(f"{indent}  Type: {json.dumps(f.athena_type)}")
        out.append(f"{indent}  Comment: {json.dumps(f.meaning)}")
    return out


def gen_named_queries(indent: str) -> list[str]:
    out = []
    for p in query_files():
        out += [
            f"{indent}{logical_id(p)}:",
            f"{indent}  Type: AWS::Athena::NamedQuery",
            f"{indent}  Properties:",
            f"{indent}    Name: meshlat {p.stem}",
            f"{indent}    Description: {json.dumps((first_comment_line(p) + ' (last 24 hours; from infra/athena/' + p.name + ')')[:1024])}",
            f"{indent}    Database: !Ref GlueDatabase",
            f"{indent}    WorkGroup: !Ref AthenaWorkGroup",
            f"{indent}    QueryString: |-",
        ]
        out += block(aws_sql(p, 1), indent + "      ")
        out.append("")
    return out[:-1]


def gen_quicksight_sql(indent: str) -> list[str]:
    return [f"{indent}SqlQuery: |-"] + block(aws_sql(ATHENA_DIR / "timeseries_region_pair.sql", 7), indent + "  ")


GENERATORS = {"columns": gen_columns, "named queries": gen_named_queries, "quicksight sql": gen_quicksight_sql}


def render(text: str) -> tuple[str, list[str]]:
    lines = text.split("\n")
    out: list[str] = []
    stale: list[str] = []
    i = 0
    seen = set()
    while i < len(lines):
        m = re.fullmatch(r"(\s*)# BEGIN GENERATED: (.+)", lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent, name = m.group(1), m.group(2).strip()
        if name not in GENERATORS:
            raise SystemExit(f"gen_infra: unknown generated section {name!r} in {TEMPLATE}")
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == f"# END GENERATED: {name}"), None)
        if end is None:
            raise SystemExit(f"gen_infra: no '# END GENERATED: {name}' in {TEMPLATE}")
        new = GENERATORS[name](indent)
        if lines[i + 1:end] != new:
            stale.append(name)
        out += [lines[i], *new, lines[end]]
        seen.add(name)
        i = end + 1
    missing = set(GENERATORS) - seen
    if missing:
        raise SystemExit(f"gen_infra: sections missing from {TEMPLATE}: {', '.join(sorted(missing))}")
    return "\n".join(out), stale


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    if argv and not check:
        print(__doc__, file=sys.stderr)
        return 2
    new, stale = render(TEMPLATE.read_text())
    rel = TEMPLATE.relative_to(ROOT)
    if check:
        if stale:
            print(f"gen_infra: stale generated sections in {rel}: {', '.join(stale)} (run scripts/gen_infra.py)")
            return 1
        print(f"gen_infra: {rel} is current")
        return 0
    TEMPLATE.write_text(new)
    print(f"gen_infra: wrote {rel}" + (f" ({', '.join(stale)})" if stale else " (unchanged)"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
