#!/usr/bin/env bash
# Installs what the end-to-end suite (tests/e2e) needs, skipping what is already there:
# Debian's chromium, msmtp, isync (mbsync), the XOAUTH2 SASL plugin, Dovecot, and the key
# tools of the token store tests (age; systemd for systemd-creds, which works as root
# without a running systemd); the pinned oidc-provider from package-lock.json (npm ci);
# aiosmtpd in the project's venv.
# Run as root (CI) or with passwordless sudo. Whatever it cannot install, the tests that
# need it are skipped with the reason.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
status=0

packages=(chromium msmtp isync libsasl2-modules-kdexoauth2 dovecot-imapd age systemd)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    if [ "$(id -u)" -eq 0 ]; then
        sudo=()
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    else
        sudo=(false)
    fi
    echo "e2e setup: installing ${missing[*]}"
    apt=(apt-get -y -qq -o DPkg::Lock::Timeout=300)
    if ! { "${sudo[@]}" "${apt[@]}" update &&
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" "${apt[@]}" install \
            --no-install-recommends "${missing[@]}" >/dev/null; }; then
        echo "e2e setup: could not install ${missing[*]}" >&2
        status=1
    fi
fi

if command -v npm >/dev/null; then
    installed="$(cd "$here" && node -p 'require("./node_modules/oidc-provider/package.json").version' 2>/dev/null || true)"
    wanted="$(cd "$here" && node -p 'require("./package-lock.json").packages["node_modules/oidc-provider"].version')"
    if [ "$installed" != "$wanted" ] || ! (cd "$here" && npm ls --silent >/dev/null 2>&1); then
        echo "e2e setup: npm ci (oidc-provider $wanted)"
        if ! (cd "$here" && npm ci --no-audit --no-fund --loglevel=error); then
            echo "e2e setup: npm ci failed" >&2
            status=1
        fi
    fi
else
    echo "e2e setup: npm not found; oidc-provider cannot be installed" >&2
    status=1
fi

python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
if ! "$python" -c 'import aiosmtpd' 2>/dev/null; then
    echo "e2e setup: pip install aiosmtpd"
    if ! "$python" -m pip install --quiet aiosmtpd; then
        echo "e2e setup: could not install aiosmtpd" >&2
        status=1
    fi
fi

exit "$status"
