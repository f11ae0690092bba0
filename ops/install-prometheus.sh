#!/usr/bin/env bash
# Make `prometheus` and `promtool` available for the ops tests (tests/ops, and
# tests/integration/test_prometheus_live.py). Idempotent: does nothing when the
# tools are already on PATH. Source: Debian's `prometheus` package (bookworm:
# 2.42.0), the only registry that ships the real server here.
#
# Also Debian's `docker-compose` (1.29, the Python v1 tool): tests/ops uses only its
# offline `config` command to validate docker-compose.yml against the Compose schema
# and interpolation rules. It never talks to a Docker engine (there is none here).
#
# The package's maintainer scripts would normally start a system Prometheus on
# :9090; a temporary policy-rc.d forbids that (the tests start their own server
# on a free loopback port, so a running service would not break them anyway).
set -euo pipefail

BINARIES=(prometheus promtool docker-compose)
PACKAGES=(prometheus docker-compose)

missing=0
for bin in "${BINARIES[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || missing=1
done
if [ "$missing" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "install-prometheus.sh: ${BINARIES[*]} are not all on PATH and this user can neither" >&2
    echo "  run apt-get (not root) nor use password-less sudo. Install them yourself:" >&2
    echo "  sudo apt-get install -y --no-install-recommends ${PACKAGES[*]}" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-prometheus.sh: no apt-get here; install ${PACKAGES[*]} by hand." >&2
    exit 1
fi

# Keep invoke-rc.d from starting the packaged service (exit 101 = "action forbidden").
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"
    created_policy=1
fi
cleanup() {
    if [ "$created_policy" -eq 1 ]; then "${SUDO[@]}" rm -f "$policy"; fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null

# If a systemd host started it anyway, stop it: it would hold :9090 for nothing.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    "${SUDO[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

for bin in "${BINARIES[@]}"; do
    if ! command -v "$bin" >/dev/null 2>&1; then
        echo "install-prometheus.sh: the packages ${PACKAGES[*]} did not provide '$bin' on PATH" >&2
        exit 1
    fi
done
echo "install-prometheus.sh: $(prometheus --version 2>&1 | head -n1)"
