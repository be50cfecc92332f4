#!/bin/sh
# Installs the Debian packages and npm tools the tests meet for real: skopeo,
# podman, docker.io (dockerd and containerd, started privately by the tests) and
# umoci (clients), docker-registry (the reference registry), redis-server, wrk,
# a Ceph cluster's daemons with python3-rados, and Azurite (npm, pinned in
# package-lock.json). Only what is missing is installed, so reruns are quick.
set -eu
cd "$(dirname "$0")/.."

PACKAGES="skopeo podman docker.io umoci docker-registry redis-server wrk ceph-mon ceph-osd ceph-mgr ceph-common python3-rados nodejs npm"
missing=""
for p in $PACKAGES; do
    case "$p" in
        # A nodesource nodejs (as on these machines) bundles npm and conflicts with
        # Debian's npm package: a working command is enough.
        nodejs|npm) command -v "${p%js}" >/dev/null 2>&1 && continue ;;
    esac
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "install-system-deps: not root; tests needing$missing will skip" >&2
        # CI must exercise every component: a missing one is a failure, not a skip
        if [ "${CI:-}" = true ]; then exit 1; fi
    else
        # set -e: a failed update or install stops the script (and `make test`) here
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
        # apt-get update can exit 0 after failed fetches; whatever is still missing now
        # is an error, not a skip
        for p in $missing; do
            case "$p" in nodejs|npm) command -v "${p%js}" >/dev/null 2>&1 && continue ;; esac
            if ! dpkg -s "$p" >/dev/null 2>&1; then
                echo "install-system-deps: $p is still not installed after apt-get install" >&2
                exit 1
            fi
        done
    fi
fi
# apt may have started services we start ourselves on free ports in the tests
for svc in redis-server docker-registry docker containerd; do
    if command -v systemctl >/dev/null 2>&1; then systemctl stop "$svc" >/dev/null 2>&1 || true; fi
done
if [ -f package-lock.json ] && command -v npm >/dev/null 2>&1 && [ ! -x node_modules/.bin/azurite ]; then
    npm ci --no-audit --no-fund --silent
fi
if [ "${CI:-}" = true ] && [ ! -x node_modules/.bin/azurite-blob ]; then
    echo "install-system-deps: Azurite is not installed (npm ci)" >&2
    exit 1
fi
