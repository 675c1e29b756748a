# Shared set-up for scripts/serve, scripts/test and scripts/bench (sourced, not run).
# Creates .venv if missing and (re)installs the project when pyproject.toml changed.
# Prints one line per stage on stderr; pip's own output goes to $VENV/install.log and, when
# stderr is a terminal, to the screen as well (its tail is shown if the install fails).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"

_stage() { echo "mlxrouter: $*" >&2; }

# pip with its full output in the log; on a terminal it is also shown as it runs.
_pip() {
    if [ -t 2 ]; then
        "$VENV/bin/python" -m pip "$@" 2>&1 | tee -a "$VENV/install.log" >&2
    else
        "$VENV/bin/python" -m pip "$@" >> "$VENV/install.log" 2>&1
    fi
}

if [ ! -x "$VENV/bin/python" ]; then
    _stage "creating the virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.mlxrouter-installed"
hash="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
want="$hash-${1:-run}"
have="$(cat "$stamp" 2>/dev/null || true)"
# A dev install serves too; anything else that differs means pyproject.toml changed.
if [ "$have" != "$want" ] && [ "$have" != "$hash-dev" ]; then
    extra=""
    [ "${1:-run}" = "dev" ] && extra="[dev]"
    : > "$VENV/install.log"
    if ! { _stage "upgrading pip" && _pip install --upgrade pip \
           && _stage "installing mlxrouter and its dependencies (first run: a few minutes)" \
           && _pip install -e "$ROOT$extra"; }; then
        # On a terminal pip's output was already on screen.
        [ -t 2 ] || tail -n 40 "$VENV/install.log" >&2
        echo "mlxrouter: installation failed (full log: $VENV/install.log)" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
