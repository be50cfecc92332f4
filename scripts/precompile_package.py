"""Add bytecode to a Lambda deployment zip, in place.

Lambda's /var/task is read-only, so a package without .pyc files is compiled from
source by every new instance and nothing it compiles is kept: 100-540 ms of a cold
start (bench/lambda_cold.py, "pyc in package"). The .pyc files carry unchecked hashes,
so the zip's timestamps never make Python recompile them, and they are compiled by this
interpreter, so its version must be the runtime's (chalice packages for the Python it
runs under; the template's Runtime is checked against it when given).

usage: python scripts/precompile_package.py deployment.zip [sam.json]
"""
from __future__ import annotations

import json
import os
import py_compile
import sys
import tempfile
import zipfile
from importlib.util import cache_from_source
from pathlib import Path


def runtime_of(template: Path) -> set[str]:
    resources = json.loads(template.read_text())["Resources"]
    return {r["Properties"]["Runtime"] for r in resources.values()
            if r["Type"] == "AWS::Serverless::Function" and "Runtime" in r.get("Properties", {})}


def precompile(package: Path) -> int:
    """Rewrite package with a __pycache__ .pyc beside every .py; returns how many."""
    compiled = 0
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        with zipfile.ZipFile(package) as zf:
            # bytecode already in the zip was made by some other interpreter: replaced
            infos = [i for i in zf.infolist() if "__pycache__/" not in i.filename]
            zf.extractall(root)
        out = package.with_suffix(".tmp")
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            for info in infos:
                zf.writestr(info, (root / info.filename).read_bytes() if not info.is_dir() else b"")
                if not info.filename.endswith(".py"):
                    continue
                source = root / info.filename
                target = Path(cache_from_source(str(source)))
                try:
                    # dfile: tracebacks name the file where Lambda has it
                    py_compile.compile(str(source), cfile=str(target), dfile=f"/var/task/{info.filename}",
                                       doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
                except py_compile.PyCompileError:
                    continue  # a vendored file for another Python (e.g. a py2 shim): left as source
                arcname = target.relative_to(root).as_posix()
                entry = zipfile.ZipInfo(arcname, date_time=info.date_time)
                entry.external_attr = 0o644 << 16
                entry.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(entry, target.read_bytes())
                compiled += 1
        os.replace(out, package)
    return compiled


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    package = Path(argv[0])
    here = f"python{sys.version_info.major}.{sys.version_info.minor}"
    if len(argv) == 2:
        runtimes = runtime_of(Path(argv[1]))
        if runtimes != {here}:
            print(f"precompile: the package is for {sorted(runtimes)}, this interpreter is {here}; "
                  "bytecode would not load there", file=sys.stderr)
            return 1
    count = precompile(package)
    print(f"{package}: {count} modules compiled for {here}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
