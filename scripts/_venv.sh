#!/usr/bin/env bash
# Make .venv with the package, its test extra and any extras named: sourced by scripts/test and
# scripts/demo (extras in VENV_EXTRAS), or run as `scripts/_venv.sh bench` by the bench scripts.
# Re-installs only when pyproject.toml or the extras changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    VENV_EXTRAS="$*"
fi
EXTRAS="test"
for extra in ${VENV_EXTRAS:-}; do EXTRAS="$EXTRAS,$extra"; done
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.meshactors-installed-$EXTRAS"
if [ ! -f "$STAMP" ] || ! cmp -s "$ROOT/pyproject.toml" "$STAMP"; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$EXTRAS]"
    cp "$ROOT/pyproject.toml" "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
