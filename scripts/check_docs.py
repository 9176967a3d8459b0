#!/usr/bin/env python3
"""Checks that README.md and infra/README.md name only repository paths that exist.

    scripts/check_docs.py      # prints what it checked; exit 1 naming every missing path

A path is a `backquoted` word or a Markdown link target that looks like one:
  - its first segment is a top-level entry of the repository, or of the README's own folder
    (infra/README.md says `athena/...` for infra/athena/...): it must exist there, as a file or
    folder; `*` globs must match something and `{a,b}` braces are expanded;
  - or a bare file name with a source ending (.rs .py .sh .sql .yaml .toml .proto .md): some
    tracked file must have that name.
Anything else in backquotes (flags, URLs, /absolute paths, placeholders such as DATA_DIR/...,
target/..., names of AWS resources) is not a repository path and is left alone.
The command lines shown in the READMEs are checked by the crates' tests
(agent and controller tests/readme_commands.rs), which parse them with the binaries' own parsers.
Stdlib only (the scripts/test.sh stage `docs`).
"""

from __future__ import annotations

import glob
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "infra/README.md"]
SOURCE_ENDINGS = (".rs", ".py", ".sh", ".sql", ".yaml", ".toml", ".proto", ".md")
WORD = re.compile(r"[\w./*{},-]+")


def tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line]


def top_level(folder: Path, files: list[str]) -> set[str]:
    """The first path segments of the tracked files below `folder`."""
    rel = folder.relative_to(ROOT)
    prefix = "" if str(rel) == "." else f"{rel}/"
    return {f[len(prefix):].split("/")[0] for f in files if f.startswith(prefix)}


def braces(word: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", word)
    if not m:
        return [word]
    return [x for alt in m.group(1).split(",") for x in braces(word[:m.start()] + alt + word[m.end():])]


def candidates(text: str) -> list[tuple[int, str]]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        for m in re.finditer(r"`([^`]+)`|\]\(([^)\s]+)\)", line):
            word = (m.group(1) or m.group(2)).split("#")[0]
            if word and WORD.fullmatch(word) and not word.startswith(("/", "-", ".")):
                out.append((n, word))
    return out


def main() -> int:
    files = tracked()
    names = {Path(f).name for f in files}
    root_top = top_level(ROOT, files)
    checked = 0
    missing = []
    for doc in DOCS:
        path = ROOT / doc
        here = path.parent
        here_top = top_level(here, files)
        for line, word in candidates(path.read_text()):
            first = word.split("/")[0]
            if "/" in word and first in here_top:
                bases = [here]
            elif "/" in word and first in root_top:
                bases = [ROOT]
            elif "/" not in word and word.endswith(SOURCE_ENDINGS):
                checked += 1
                if word not in names:
                    missing.append(f"{doc}:{line}: `{word}`: no tracked file has this name")
                continue
            else:
                continue
            checked += 1
            for alt in braces(word):
                if not any(glob.glob(str(b / alt)) for b in bases):
                    where = "" if bases == [ROOT] else f" (in {here.relative_to(ROOT)}/)"
                    missing.append(f"{doc}:{line}: `{word}`: {alt} does not exist{where}")
    for m in missing:
        print(m)
    print(f"check_docs: {checked} repository paths in {', '.join(DOCS)}, {len(missing)} missing")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
