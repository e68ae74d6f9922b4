#!/usr/bin/env bash
# Create .venv and install grlhf into it (idempotent: re-runs only when the package metadata changed).
#   bash scripts/setup.sh        the package, for `python -m grlhf.train`
#   bash scripts/setup.sh test   the package and the test extras, for `python -m pytest`
# GRLHF_VENV overrides the environment's location; GRLHF_CONSTRAINTS the pins (default: constraints/cpu.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
venv="${GRLHF_VENV:-.venv}"
constraints="${GRLHF_CONSTRAINTS:-constraints/cpu.txt}"
spec="."
[ -n "$extras" ] && spec=".[$extras]"

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
stamp="$venv/.grlhf-installed-$(cat setup.cfg pyproject.toml "$constraints" | sha256sum | cut -c1-16)-${extras:-base}"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing grlhf${extras:+[$extras]} into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -c "$constraints" -e "$spec"
  touch "$stamp"
fi
