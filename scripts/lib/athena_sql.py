"""Reads a shipped Athena query (infra/athena/*.sql) with its includes put in place (stdlib only).

Every query shares its opening through one prelude, infra/athena/include/prelude.sql (the time
range and deduplication CTEs `in_range` and `dedup`, and the notes on them): the query has the line
`-- #include include/prelude.sql` (a path relative to the query's folder) where that text belongs.
An included file's first paragraph (up to its first empty line) describes the file itself and is
left out. Includes do not nest. Used by scripts/athena-local and scripts/gen_infra.py.
"""

from __future__ import annotations

import re
from pathlib import Path

INCLUDE = re.compile(r"--\s*#include\s+(\S+)\s*")


class IncludeError(Exception):
    """An #include line names a file that cannot be read, or an included file includes again."""


def included_text(path: Path) -> str:
    """The part of an included file that goes into a query: all after its first paragraph."""
    lines = path.read_text().rstrip("\n").split("\n")
    if "" in lines:
        lines = lines[lines.index("") + 1:]
    return "\n".join(lines)


def expand(text: str, folder: Path, name: str = "query") -> str:
    """`text` with each `-- #include PATH` line replaced by the text of folder/PATH."""
    out = []
    for line in text.split("\n"):
        m = INCLUDE.fullmatch(line)
        if not m:
            out.append(line)
            continue
        inc = folder / m.group(1)
        try:
            body = included_text(inc)
        except OSError as e:
            raise IncludeError(f"{name}: cannot read {m.group(1)} (#include, from {folder}): {e.strerror}") from None
        if any(INCLUDE.fullmatch(x) for x in body.split("\n")):
            raise IncludeError(f"{name}: {m.group(1)} has an #include of its own (includes do not nest)")
        out.append(body)
    return "\n".join(out)


def load(path: Path) -> str:
    """The query at `path` as it runs: its #include lines replaced (raises OSError, IncludeError)."""
    return expand(path.read_text(), path.parent, path.name)
