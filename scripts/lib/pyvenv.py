"""Project-local virtualenvs for the Python tools (stdlib only).

Each tool re-executes itself inside its virtualenv, which scripts/lib/venv.sh creates on first use
(idempotently, pinned versions, stamp file; gitignored as /.venv*):

    .venv-analytics   duckdb, sqlglot, PyYAML  scripts/athena-local, check_schema.py, test_analytics.py
    .venv-cfn         cfn-lint                 scripts/lint-infra.sh
    .venv-checkov     checkov                  scripts/lint-infra.sh (own venv: it pins an older boto3)
    .venv-infra       PyYAML                   scripts/test_infra.py (template invariants)
    .venv-ruff        ruff                     scripts/lint-scripts.sh ruff (the ruff stage)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_SH = ROOT / "scripts" / "lib" / "venv.sh"

ANALYTICS = ("analytics", ["duckdb==1.5.6", "sqlglot==30.30.0", "PyYAML==6.0.2"])
INFRA = ("infra", ["PyYAML==6.0.2"])


def ensure(name: str, requirements: list[str]) -> Path:
    """Creates/updates .venv-<name> with `requirements`; returns its directory."""
    r = subprocess.run([str(VENV_SH), name, *requirements], stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"{Path(sys.argv[0]).name}: could not prepare .venv-{name} (see above); "
                 f"retry: {VENV_SH.relative_to(ROOT)} {name} {' '.join(requirements)}")
    return Path(r.stdout.strip().splitlines()[-1])


def reexec_in(venv: tuple[str, list[str]]) -> None:
    """Re-executes the running script with .venv-<name>'s python unless already inside it."""
    name, reqs = venv
    marker = f"MESHLAT_IN_VENV_{name.upper()}"
    target = ROOT / f".venv-{name}"
    if os.environ.get(marker) == "1" and Path(sys.prefix).resolve() == target.resolve():
        return
    path = ensure(name, reqs)
    python = path / "bin" / "python"
    os.environ[marker] = "1"
    os.execv(str(python), [str(python), os.path.abspath(sys.argv[0]), *sys.argv[1:]])
