# Sourced by scripts/*: make ./.venv exist and hold the project as it is now.
# Reinstalls only when pyproject.toml changed since the last install.

ensure_venv() {
    local extra="${1:-}"
    local root venv stamp want python
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    venv="${HS_VENV:-$root/.venv}"
    stamp="$venv/.installed"
    python="${PYTHON:-python3}"
    if ! command -v "$python" >/dev/null 2>&1; then
        echo "scripts: $python not found; install Python 3.11 or newer" >&2
        return 1
    fi
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "scripts: $("$python" --version) is too old; Python 3.11 or newer is needed" >&2
        return 1
    fi
    want="$(cat "$root/pyproject.toml" | sha256sum | cut -c1-16)${extra:+-$extra}"
    if [ -x "$venv/bin/python" ] && [ -f "$stamp" ]; then
        # An installed [test] extra also serves a plain run.
        if [ "$(cat "$stamp")" = "$want" ] || [ "$(cat "$stamp")" = "${want%-*}-test" ]; then
            return 0
        fi
    fi
    echo "scripts: preparing $venv (first use or dependencies changed)..." >&2
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet -e "$root${extra:+[$extra]}" >&2
    echo "$want" > "$stamp"
}
