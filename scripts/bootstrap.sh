# Sourced by scripts/run and scripts/test: makes .venv with treadguard and its test tools.
# Reinstalls only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need_apt() {
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# need_apt_unstarted PACKAGE...: installs them without starting their services. Debian's
# maintainer scripts ask /usr/sbin/policy-rc.d whether they may start one (invoke-rc.d and
# deb-systemd-invoke both do); exit code 101 says no. A policy the machine already has is its
# owner's and is left alone; ours is only there during the install. Under systemd the unit is
# still enabled by the package: it is disabled again, so that it does not start at the next boot.
need_apt_unstarted() {
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    local policy=/usr/sbin/policy-rc.d ours=0 status=0 package
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# treadguard scripts/test: no service starts while it installs\nexit 101\n' |
            $sudo tee "$policy" >/dev/null
        $sudo chmod 0755 "$policy"
        ours=1
    fi
    need_apt "$@" || status=$?
    if [ "$ours" = 1 ]; then $sudo rm -f "$policy"; fi
    if [ -d /run/systemd/system ]; then
        for package in "$@"; do
            $sudo systemctl disable --quiet "$package" 2>/dev/null || true
        done
    fi
    return "$status"
}

python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null; then
    echo "treadguard: installing Python 3 from Debian's packages" >&2
    need_apt python3 python3-venv
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "treadguard needs Python 3.11 or newer; $python is $("$python" --version)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$python" -m venv .venv 2>/dev/null; then
        echo "treadguard: installing python3-venv from Debian's packages" >&2
        rm -rf .venv
        need_apt python3-venv
        "$python" -m venv .venv
    fi
fi
stamp=.venv/.treadguard-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "treadguard: installing Python packages into .venv" >&2
    if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip &&
           .venv/bin/python -m pip install --disable-pip-version-check -e '.[test]'; } \
           > .venv/pip.log 2>&1; then
        cat .venv/pip.log >&2
        echo "treadguard: installing the Python packages failed (log above)" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi

# The tablet page's dependencies, MQTT.js and Chart.js, pinned in tablet/package-lock.json, into
# tablet/node_modules (Mosquitto serves the page and it from there); again only when the lock
# file changed. --ignore-scripts: nothing from the registry runs here, the page only needs files.
tablet_page_deps() {
    if ! command -v npm >/dev/null; then
        echo "treadguard: installing nodejs and npm from Debian's packages" >&2
        need_apt nodejs npm
    fi
    local stamp=tablet/node_modules/.treadguard-installed want
    want=$(sha256sum tablet/package-lock.json | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "treadguard: installing the tablet page's MQTT client (npm ci in tablet/)" >&2
        if ! (cd tablet && npm ci --ignore-scripts --no-audit --no-fund) > .venv/npm.log 2>&1; then
            cat .venv/npm.log >&2
            echo "treadguard: npm ci in tablet/ failed (log above)" >&2
            exit 1
        fi
        echo "$want" > "$stamp"
    fi
    # The page's words for the contract's codes, written from contract/event_text.py (never
    # committed: a copy kept by hand would drift).
    .venv/bin/python -m treadguard.controller.page_words tablet/words.js
}
