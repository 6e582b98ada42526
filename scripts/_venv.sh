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
    echo "first run: making a virtual environment in $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.meshactors-installed-$EXTRAS"
if [ ! -f "$STAMP" ] || ! cmp -s "$ROOT/pyproject.toml" "$STAMP"; then
    echo "installing meshactors[$EXTRAS] (editable) and its dependencies from pyproject.toml" \
        "into $VENV with pip: a minute or so, once (again only when pyproject.toml changes)" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$EXTRAS]"
    cp "$ROOT/pyproject.toml" "$STAMP"
fi
export PATH="$VENV/bin:$PATH"  # `meshactors` is in $VENV/bin
