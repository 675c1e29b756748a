# Shared set-up for scripts/serve, scripts/test and scripts/bench (sourced, not run).
# Creates .venv if missing and (re)installs the project when pyproject.toml changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "mlxrouter: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.mlxrouter-installed"
hash="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
want="$hash-${1:-run}"
have="$(cat "$stamp" 2>/dev/null || true)"
# A dev install serves too; anything else that differs means pyproject.toml changed.
if [ "$have" != "$want" ] && [ "$have" != "$hash-dev" ]; then
    echo "mlxrouter: installing the project into $VENV" >&2
    extra=""
    [ "${1:-run}" = "dev" ] && extra="[dev]"
    # pip's output goes to a log, shown only when the install fails.
    if ! { "$VENV/bin/python" -m pip install --upgrade pip \
           && "$VENV/bin/python" -m pip install -e "$ROOT$extra"; } > "$VENV/install.log" 2>&1; then
        tail -n 40 "$VENV/install.log" >&2
        echo "mlxrouter: installation failed (full log: $VENV/install.log)" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
