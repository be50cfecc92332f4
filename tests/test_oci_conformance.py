"""The official OCI distribution-spec conformance suite (tests/oci_conformance.py).

Against the shared server, so `make test` runs it on every backend
(STRATUS_TEST_BACKEND: filesystem, then s3, azure, rados and redis in
`make test-backends`), and once with token auth. The S3, Azure, Functions app,
`chalice local` and htpasswd runs sit beside the other tests of each.

    STRATUS_TEST_BACKEND=rados .venv/bin/python -m pytest tests/test_oci_conformance.py
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .conftest import BACKEND, RunningRegistry
from .oci_conformance import requires_conformance, run_oci_conformance
from .servers import stratus_server
from .token_issuer import TokenIssuer

pytestmark = requires_conformance


def test_official_conformance_suite_passes(stratus: RunningRegistry, tmp_path: Path) -> None:
    run_oci_conformance(stratus.url, tmp_path, label=f"[{BACKEND}] stratus serve")


# The reference registry asks a mount's token for pull on the `from` repository too
# (registry/handlers/app.go: "mounting a blob from one repository to another requires
# pull (GET) access to the source repository"); Stratus's challenge names only the
# target (chalicelib/api/uploads.py access()), so a token client's token cannot pull
# `from`, the mount falls back to an upload (202), and the suite scores 74 passed,
# 0 failed, 5 skipped. strict: once the challenge asks for both, this xpass fails
# and the mark must go.
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="the 401 challenge of POST ?mount=&from= does not ask for pull on `from`")
def test_official_conformance_suite_passes_with_token_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite logs in as a user of the token server: the 401 challenge, a token for
    each scope asked (the cross-mount's source repository too), then Bearer requests."""
    issuer = TokenIssuer(users={"conformance": ("conformance-pw", {"*": ["pull", "push", "delete"]})})
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("OCI_USERNAME", "conformance")
    monkeypatch.setenv("OCI_PASSWORD", "conformance-pw")
    with issuer.serve() as realm:
        config = tmp_path / "config.yml"
        config.write_text(yaml.safe_dump({"version": "0.1", "auth": issuer.auth_config(tmp_path, realm=realm)}))
        with stratus_server(root, config=config) as url:
            work = tmp_path / "suite"
            work.mkdir()
            run_oci_conformance(url, work, label="[filesystem] token auth")
