# Sourced by scripts/*: make a separate venv hold Synapse, the real peer of the interop tests
# and the benchmark. Kept apart from ./.venv so its pins never meet ours. Reinstalls only when
# the pinned version changes.

HS_SYNAPSE_VERSION="1.163.2"

ensure_synapse_venv() {
    local root venv stamp python
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    venv="${HS_SYNAPSE_VENV:-$root/.venv-synapse}"
    stamp="$venv/.installed"
    python="${PYTHON:-python3}"
    if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$HS_SYNAPSE_VERSION" ]; then
        return 0
    fi
    echo "scripts: installing Synapse $HS_SYNAPSE_VERSION into $venv..." >&2
    # Each step returns on failure itself: callers may run this under `if`, where set -e is off.
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv" || return 1
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2 || return 1
    # [postgres] brings psycopg2 so a test may also run Synapse on PostgreSQL.
    "$venv/bin/python" -m pip install --quiet "matrix-synapse[postgres]==$HS_SYNAPSE_VERSION" >&2 \
        || return 1
    "$venv/bin/python" -c 'import synapse' >&2 || return 1
    echo "$HS_SYNAPSE_VERSION" > "$stamp"
}
