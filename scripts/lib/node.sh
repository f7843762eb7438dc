# Sourced by scripts/test: install the JavaScript Matrix clients the tests drive
# (tests/js/package-lock.json, matrix-js-sdk with its Rust crypto) when Node.js is here.
# Reinstalls only when the lockfile changed. Returns non-zero when they can't be installed.

ensure_js_clients() {
    local root dir stamp want
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    dir="$root/tests/js"
    stamp="$dir/node_modules/.installed"
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        echo "scripts: Node.js/npm not found; the matrix-js-sdk tests will be skipped" >&2
        return 1
    fi
    want="$(sha256sum "$dir/package-lock.json" | cut -c1-16)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    echo "scripts: installing the JavaScript test clients (npm ci in tests/js)..." >&2
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2) || return 1
    echo "$want" > "$stamp"
}
