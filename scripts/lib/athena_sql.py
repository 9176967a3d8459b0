"""Reads a shipped Athena query (infra/athena/*.sql) with its includes put in place (stdlib only).

Every query shares its opening through one prelude, infra/athena/include/prelude.sql (the time
range and deduplication CTEs `in_range` and `dedup`, and the notes on them): the query has the line
`-- #include include/prelude.sql` (a path relative to the query's folder) where that text belongs.
CTEs that several queries share live in include/ too (rtt_samples.sql, percentiles.sql, probe_counts.sql, relay_stats.sql).

An include line may pass parameters: `-- #include include/percentiles.sql group=a,b,c` puts
`a, b, c` where the file says `{{group}}`. A value is a comma-separated list of SQL identifiers;
a parameter the file uses but the line does not give, or one the line gives but the file does not
use, is an error. Included CTEs end with a comma; an include followed by the query's SELECT
loses it. An included file's first paragraph (up to its first empty line) describes the
file itself and is left out. Includes do not nest. Used by scripts/athena-local and
scripts/gen_infra.py.
"""

from __future__ import annotations

import re
from pathlib import Path

INCLUDE = re.compile(r"--\s*#include\s+(\S+)((?:\s+\S+)*)\s*")
PARAM = re.compile(r"([a-z_]+)=([A-Za-z_][A-Za-z0-9_]*(?:,[A-Za-z_][A-Za-z0-9_]*)*)")
PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")


class IncludeError(Exception):
    """An #include line names a file that cannot be read, passes parameters that do not fit the
    file, or the included file includes again."""


def included_text(path: Path) -> str:
    """The part of an included file that goes into a query: all after its first paragraph."""
    lines = path.read_text().rstrip("\n").split("\n")
    if "" in lines:
        lines = lines[lines.index("") + 1:]
    return "\n".join(lines)


def parameters(args: str, name: str, inc: str) -> dict[str, str]:
    """The `key=a,b` parameters of an include line, each value as SQL (`a, b`)."""
    params = {}
    for arg in args.split():
        m = PARAM.fullmatch(arg)
        if not m:
            raise IncludeError(
                f"{name}: #include {inc}: parameter {arg!r} is not key=IDENT[,IDENT...] "
                "(lower-case key; SQL identifiers, no spaces)"
            )
        if m.group(1) in params:
            raise IncludeError(f"{name}: #include {inc}: parameter {m.group(1)} given twice")
        params[m.group(1)] = ", ".join(m.group(2).split(","))
    return params


def substitute(body: str, params: dict[str, str], name: str, inc: str) -> str:
    """`body` with each `{{key}}` replaced by its parameter; all given and all used."""
    used = set(PLACEHOLDER.findall(body))
    missing = sorted(used - params.keys())
    if missing:
        raise IncludeError(f"{name}: #include {inc}: needs parameter(s) {', '.join(missing)} (e.g. {missing[0]}=a,b)")
    unused = sorted(params.keys() - used)
    if unused:
        raise IncludeError(f"{name}: #include {inc}: takes no parameter(s) {', '.join(unused)}")
    return PLACEHOLDER.sub(lambda m: params[m.group(1)], body)


def expand(text: str, folder: Path, name: str = "query") -> str:
    """`text` with each `-- #include PATH [key=value ...]` line replaced by the text of
    folder/PATH, its `{{key}}` placeholders filled."""
    out = []
    lines = text.split("\n")
    for i, line in enumerate(lines):
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
        body = substitute(body, parameters(m.group(2), name, m.group(1)), name, m.group(1))
        # Included CTEs end with a comma; the last before the query's SELECT must not.
        if i + 1 < len(lines) and lines[i + 1].lstrip().upper().startswith("SELECT") and body.rstrip().endswith(","):
            body = body.rstrip()[:-1]
        out.append(body)
    return "\n".join(out)


def load(path: Path) -> str:
    """The query at `path` as it runs: its #include lines replaced (raises OSError, IncludeError)."""
    return expand(path.read_text(), path.parent, path.name)
