#!/bin/sh
# Assembles a deployable Functions app in azure_func/dist: this folder's files plus
# the chalicelib package, which function_app.py imports. Publish it with
#   cd azure_func/dist && func azure functionapp publish <app-name> --python
# or zip it (STRATUS_ZIP=1) for a zip deployment with a remote build.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
out="${1:-$here/dist}"

rm -rf "$out"
mkdir -p "$out"
cp "$here/function_app.py" "$here/host.json" "$here/requirements.txt" "$here/.funcignore" "$out/"
[ -f "$here/local.settings.json" ] && cp "$here/local.settings.json" "$out/"
# the library without caches or tests
(cd "$root" && tar -cf - --exclude='__pycache__' --exclude='*.pyc' chalicelib) | (cd "$out" && tar -xf -)

if [ "${STRATUS_ZIP:-0}" = 1 ]; then
    (cd "$out" && rm -f "$out.zip" && python3 -m zipfile -c "$out.zip" \
        function_app.py host.json requirements.txt chalicelib)
    echo "$out.zip"
else
    echo "$out"
fi
