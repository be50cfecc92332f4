"""The azure driver against Azurite: the conformance suite plus what is particular to it."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import requests

pytest.register_assert_rewrite("tests.storage_suite")

from chalicelib.context import Context  # noqa: E402
from chalicelib.storage import InvalidPathError, PathNotFoundError, StorageError, create_driver  # noqa: E402
from chalicelib.storage.azure import AzureDriver, blocks, from_parameters, parse_parameters  # noqa: E402
from tests.oci_conformance import requires_conformance, run_oci_conformance  # noqa: E402
from tests.azurite import ACCOUNT_NAME, Azurite, FakeEntraCredential, start_azurite  # noqa: E402
from tests.clients_images import Layout, assert_same_image, images_dir, needs_tools, pull, push, session_image  # noqa: E402
from tests.servers import stratus_server  # noqa: E402
from tests.storage_suite import StorageDriverSuite, payload  # noqa: E402

KiB, MiB = 1024, 1024 * 1024


@pytest.fixture(scope="module")
def container(azurite: Azurite) -> str:
    return azurite.new_container()


@pytest.fixture
def driver(azurite: Azurite, container: str) -> AzureDriver:
    return from_parameters(azurite.driver_parameters(container))


@pytest.fixture
def ctx() -> Context:
    return Context()


def committed_and_staged(azurite: Azurite, container: str, prefix: str) -> list[str]:
    """Every blob name under prefix, including blobs that only have staged blocks."""
    client = azurite.service_client().get_container_client(container)
    return sorted(b.name for b in client.list_blobs(name_starts_with=prefix, include=["uncommittedblobs"]))


class TestAzureDriver(StorageDriverSuite):
    @pytest.fixture
    def driver(self, azurite: Azurite, container: str) -> AzureDriver:
        return from_parameters(azurite.driver_parameters(container))


class TestAzureDriverWithRootDirectory(StorageDriverSuite):
    """The parts of the suite where a key-prefix slip would show, below a root directory."""

    @pytest.fixture
    def driver(self, azurite: Azurite, container: str) -> AzureDriver:
        return from_parameters(azurite.driver_parameters(container, rootdirectory="/some/root/"))


_PREFIX_SENSITIVE = {
    "test_put_creates_missing_parents", "test_unusual_valid_names", "test_prefix_of_a_file_is_not_a_file",
    "test_close_then_append_in_new_writer", "test_cancel_removes_bytes_of_earlier_sessions",
    "test_stat_file", "test_stat_directory", "test_stat_root_is_a_directory",
    "test_list_children_with_full_paths", "test_list_does_not_cross_into_prefix_siblings",
    "test_list_root_includes_prefix", "test_move_to_new_path_creates_parents", "test_delete_directory_tree",
    "test_walk_is_complete_and_depth_first", "test_walk_root_of_prefix", "test_redirect_url_is_none_or_url",
}
for _name in dir(StorageDriverSuite):
    if _name.startswith("test_") and _name not in _PREFIX_SENSITIVE:
        setattr(TestAzureDriverWithRootDirectory, _name, None)


# -- keys and layout -------------------------------------------------------------------------


def test_keys_follow_registry_layout_without_leading_slash(azurite, container, ctx) -> None:
    driver = from_parameters(azurite.driver_parameters(container, rootdirectory="tenant-a"))
    driver.put_content(ctx, "/docker/registry/v2/repositories/x/_layers/link", b"sha256:00")
    names = committed_and_staged(azurite, container, "tenant-a/")
    assert names == ["tenant-a/docker/registry/v2/repositories/x/_layers/link"]
    driver.delete(ctx, "/docker")


def test_legacy_root_prefix_reads_registry_2x_names(azurite, container, ctx) -> None:
    # registry 2.x's azure driver named blobs with a leading "/"
    client = azurite.service_client().get_container_client(container)
    client.upload_blob("/docker/registry/v2/blobs/sha256/ab/abcd/data", b"legacy", overwrite=True)
    driver = from_parameters(azurite.driver_parameters(container, legacyrootprefix=True))
    assert driver.get_content(ctx, "/docker/registry/v2/blobs/sha256/ab/abcd/data") == b"legacy"
    listing = driver.list(ctx, "/docker/registry/v2/blobs/sha256/ab")
    assert listing == ["/docker/registry/v2/blobs/sha256/ab/abcd"]
    driver.delete(ctx, "/docker")
    assert committed_and_staged(azurite, container, "/docker/") == []


# -- uploads across requests -------------------------------------------------------------------


def test_close_leaves_blocks_staged_and_stat_counts_them(azurite, container, driver, ctx) -> None:
    path = "/staged/upload/data"
    writer = driver.writer(ctx, path)
    writer.write(payload(1000))
    writer.close()
    writer = from_parameters(azurite.driver_parameters(container)).writer(ctx, path, append=True)
    writer.write(payload(500, seed=1))
    writer.close()

    blob = azurite.service_client().get_blob_client(container, "staged/upload/data")
    committed, uncommitted = blob.get_block_list("all")
    assert committed == [] and [b.size for b in uncommitted] == [1000, 500]
    assert blob.get_blob_properties().size == 0  # nothing committed yet
    assert driver.stat(ctx, path).size == 1500
    assert sorted(i.path for i in driver.walk(ctx, "/staged") if not i.is_dir) == [path]
    assert [i.size for i in driver.walk(ctx, "/staged") if not i.is_dir] == [1500]

    writer = driver.writer(ctx, path, append=True)
    assert writer.size == 1500
    writer.commit()
    writer.close()
    committed, uncommitted = blob.get_block_list("all")
    assert [b.size for b in committed] == [1000, 500] and uncommitted == []
    assert driver.get_content(ctx, path) == payload(1000) + payload(500, seed=1)
    assert not blocks.is_staged(blob.get_blob_properties().metadata)
    driver.delete(ctx, "/staged")


def test_block_ids_encode_order_and_have_one_length(azurite, container, driver, ctx) -> None:
    path = "/ids/data"
    driver.writer(ctx, path).close()
    for i in range(12):  # more than 10 sessions: ids must not sort "10" before "2"
        writer = driver.writer(ctx, path, append=True)
        writer.write(bytes([i]) * (i + 1))
        writer.close()
    blob = azurite.service_client().get_blob_client(container, "ids/data")
    _, uncommitted = blob.get_block_list("all")
    assert len({len(b.id) for b in uncommitted}) == 1
    assert [blocks.parse_block_id(b.id) for b in uncommitted] == list(range(12))
    expected = b"".join(bytes([i]) * (i + 1) for i in range(12))
    with driver.reader(ctx, path) as stream:  # reading commits what is staged, in order
        assert stream.read() == expected
    writer = driver.writer(ctx, path, append=True)
    assert writer.size == len(expected)
    writer.write(b"end")
    writer.commit()
    assert driver.get_content(ctx, path) == expected + b"end"
    driver.delete(ctx, "/ids")


def test_large_writes_are_staged_in_bounded_blocks(azurite, container, driver, ctx) -> None:
    path = "/big/data"
    data = payload(blocks.BLOCK_SIZE * 2 + 3)
    writer = driver.writer(ctx, path)
    writer.write(data)
    writer.close()
    blob = azurite.service_client().get_blob_client(container, "big/data")
    _, uncommitted = blob.get_block_list("all")
    assert [b.size for b in uncommitted] == [blocks.BLOCK_SIZE, blocks.BLOCK_SIZE, 3]
    driver.delete(ctx, "/big")


def test_cancel_leaves_no_committed_or_staged_blob(azurite, container, driver, ctx) -> None:
    path = "/cancel/upload/data"
    driver.writer(ctx, path).close()
    writer = driver.writer(ctx, path, append=True)
    writer.write(payload(10 * KiB))
    writer.close()
    writer = driver.writer(ctx, path, append=True)
    writer.write(b"more")
    writer.cancel()
    assert committed_and_staged(azurite, container, "cancel/") == []
    with pytest.raises(PathNotFoundError):
        driver.stat(ctx, path)


def test_delete_directory_removes_uploads_in_progress(azurite, container, driver, ctx) -> None:
    driver.put_content(ctx, "/repo/_uploads/u1/startedat", b"2024-01-01T00:00:00Z")
    writer = driver.writer(ctx, "/repo/_uploads/u1/data")
    writer.write(b"staged bytes")
    writer.close()
    # blocks staged on a blob that has no committed version (a writer raced a delete)
    azurite.service_client().get_blob_client(container, "repo/_uploads/u2/data").stage_block(
        blocks.block_id(0, "00000000"), b"orphan")
    with ThreadPoolExecutor(16) as pool:  # more files than one delete batch takes
        list(pool.map(lambda i: driver.put_content(ctx, f"/repo/_layers/l{i}", b"x"), range(260)))
    driver.delete(ctx, "/repo")
    assert committed_and_staged(azurite, container, "repo/") == []


def test_append_to_registry_2x_append_blob(azurite, container, driver, ctx) -> None:
    blob = azurite.service_client().get_blob_client(container, "legacy/_uploads/u/data")
    blob.create_append_blob()
    blob.append_block(b"from registry 2.x;")
    writer = driver.writer(ctx, "/legacy/_uploads/u/data", append=True)
    assert writer.size == 18
    writer.write(b" finished here")
    writer.commit()
    driver.move(ctx, "/legacy/_uploads/u/data", "/legacy/blob")
    assert driver.get_content(ctx, "/legacy/blob") == b"from registry 2.x; finished here"
    driver.delete(ctx, "/legacy")


def test_append_after_put_content_keeps_content(driver, ctx) -> None:
    driver.put_content(ctx, "/adopt/f", b"put ")
    writer = driver.writer(ctx, "/adopt/f", append=True)
    assert writer.size == 4
    writer.write(b"then appended")
    writer.commit()
    assert driver.get_content(ctx, "/adopt/f") == b"put then appended"
    driver.delete(ctx, "/adopt")


def test_move_is_a_server_side_copy(azurite, container, driver, ctx, monkeypatch) -> None:
    data = payload(3 * MiB)
    writer = driver.writer(ctx, "/mv/upload")
    writer.write(data)
    writer.commit()
    writer.close()

    def no_download(*args, **kwargs):
        raise AssertionError("move must not download")

    from azure.storage.blob import BlobClient

    monkeypatch.setattr(BlobClient, "download_blob", no_download)
    driver.move(ctx, "/mv/upload", "/mv/blob")
    monkeypatch.undo()
    assert driver.get_content(ctx, "/mv/blob") == data
    assert committed_and_staged(azurite, container, "mv/") == ["mv/blob"]
    driver.delete(ctx, "/mv")


def test_move_of_a_file_being_written_takes_its_staged_bytes(driver, ctx) -> None:
    writer = driver.writer(ctx, "/mvs/upload")
    writer.write(b"staged only")
    writer.close()
    driver.move(ctx, "/mvs/upload", "/mvs/blob")
    assert driver.get_content(ctx, "/mvs/blob") == b"staged only"
    assert driver.stat(ctx, "/mvs/blob").size == 11
    driver.delete(ctx, "/mvs")


# -- redirects ------------------------------------------------------------------------------------


def test_redirect_is_a_read_only_sas_that_expires(azurite, container, driver, ctx) -> None:
    driver.put_content(ctx, "/sas/blob", b"signed bytes")
    url = driver.redirect_url(ctx, "GET", "/sas/blob", 1200)
    assert url.startswith(azurite.blob_endpoint + f"/{container}/sas/blob?")
    query = parse_qs(urlsplit(url).query)
    assert query["sp"] == ["r"]
    expiry = datetime.strptime(query["se"][0], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert abs(expiry - (datetime.now(timezone.utc) + timedelta(seconds=1200))) < timedelta(seconds=30)
    response = requests.get(url, timeout=10)
    assert response.status_code == 200 and response.content == b"signed bytes"
    write = requests.put(url, data=b"x", headers={"x-ms-blob-type": "BlockBlob"}, timeout=10)
    assert write.status_code == 403
    assert driver.redirect_url(ctx, "PUT", "/sas/blob", 60) is None
    driver.delete(ctx, "/sas")


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_tampered_sas_is_refused(driver, ctx) -> None:
    driver.put_content(ctx, "/tamper/blob", b"secret")
    driver.put_content(ctx, "/tamper/other", b"other")
    url = driver.redirect_url(ctx, "GET", "/tamper/blob", 600)
    later = (datetime.now(timezone.utc) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    forged = [
        _with_query(url, se=later),  # extended expiry
        _with_query(url, sp="rwd"),  # more permissions
        _with_query(url, sig="A" + parse_qs(urlsplit(url).query)["sig"][0][1:]),  # altered signature
        url.replace("/tamper/blob?", "/tamper/other?"),  # another blob
    ]
    for bad in forged:
        assert requests.get(bad, timeout=10).status_code == 403, bad
    driver.delete(ctx, "/tamper")


def test_expired_sas_is_refused(driver, ctx) -> None:
    driver.put_content(ctx, "/expired/blob", b"x")
    url = driver.redirect_url(ctx, "GET", "/expired/blob", 1)
    import time

    time.sleep(2)
    assert requests.get(url, timeout=10).status_code == 403
    driver.delete(ctx, "/expired")


# -- configuration ----------------------------------------------------------------------------------


def test_factory_builds_azure_driver_without_touching_the_network() -> None:
    driver = create_driver("azure", {"accountname": "acct", "accountkey": "a2V5", "container": "registry"})
    assert isinstance(driver, AzureDriver) and driver.name == "azure"
    assert driver.params.service_url == "https://acct.blob.core.windows.net"
    sovereign = parse_parameters(
        {"accountname": "acct", "container": "reg", "realm": "core.chinacloudapi.cn"})
    assert sovereign.service_url == "https://acct.blob.core.chinacloudapi.cn"
    assert sovereign.credentials.type == "default_credentials"


def test_importing_the_driver_does_not_import_the_sdk() -> None:
    code = (
        "import sys; import chalicelib.storage.azure as a;"
        "d = a.from_parameters({'accountname': 'acct', 'container': 'registry'});"
        "print(any(m == 'azure' or m.startswith('azure.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "params, key",
    [
        ({"accountname": "acct"}, "storage.azure.container"),
        ({"accountname": "acct", "container": "Bad_Name"}, "storage.azure.container"),
        ({"container": "registry"}, "storage.azure.accountname"),
        ({"accountname": "acct", "container": "registry", "bucket": "x"}, "storage.azure.bucket"),
        ({"accountname": "acct", "container": "registry", "credentials": {"type": "password"}},
         "storage.azure.credentials.type"),
        ({"accountname": "acct", "container": "registry", "credentials": {"type": "client_secret"}},
         "storage.azure.credentials.clientid"),
        ({"accountname": "acct", "container": "registry", "copy_status_poll_delay": "soon"},
         "storage.azure.copy_status_poll_delay"),
        ({"accountname": "acct", "container": "registry", "serviceurl": "ftp://x"},
         "storage.azure.serviceurl"),
    ],
)
def test_bad_parameters_name_their_key(params, key) -> None:
    with pytest.raises(ValueError, match="^" + key.replace(".", r"\.")):
        parse_parameters(params)


def test_secrets_are_not_echoed_in_errors() -> None:
    with pytest.raises(ValueError) as info:
        parse_parameters({"accountname": "acct", "container": "registry", "accountkey": ["k3y-material"]})
    assert "k3y-material" not in str(info.value)


def test_environment_selects_and_configures_azure(azurite, container) -> None:
    from chalicelib.config import load_config

    config = load_config(environ=azurite.environment(container, REGISTRY_STORAGE_AZURE_ROOTDIRECTORY="/env-root"))
    assert config.storage.driver == "azure"
    driver = create_driver(config.storage.driver, config.storage.parameters)
    ctx = Context()
    driver.put_content(ctx, "/f", b"via env")
    assert committed_and_staged(azurite, container, "env-root/") == ["env-root/f"]
    driver.delete(ctx, "/f")


def test_connection_string_configures_the_driver(azurite, container) -> None:
    driver = from_parameters({"connectionstring": azurite.connection_string, "container": container})
    ctx = Context()
    driver.put_content(ctx, "/cs/f", b"x")
    assert driver.redirect_url(ctx, "GET", "/cs/f", 60).startswith(azurite.blob_endpoint)
    driver.delete(ctx, "/cs")


def test_one_sdk_client_per_process(azurite, container) -> None:
    first = from_parameters(azurite.driver_parameters(container))
    second = from_parameters(azurite.driver_parameters(container, rootdirectory="elsewhere"))
    assert first._bind()[0] is second._bind()[0]  # one connection pool for both
    differently_configured = from_parameters(azurite.driver_parameters(container, max_retries=1))
    assert differently_configured._bind()[0] is not first._bind()[0]


def test_missing_container_is_a_clear_error(azurite) -> None:
    driver = from_parameters(azurite.driver_parameters("no-such-container"))
    ctx = Context()
    with pytest.raises(PathNotFoundError):
        driver.get_content(ctx, "/f")
    with pytest.raises(StorageError, match="no-such-container.*does not exist"):
        driver.put_content(ctx, "/f", b"x")
    assert driver.list(ctx, "/") == []


def test_invalid_paths_never_reach_azure(driver, ctx) -> None:
    with pytest.raises(InvalidPathError):
        driver.redirect_url(ctx, "GET", "/a/../b", 60)


# -- end to end: `stratus serve` over Azure, with skopeo -------------------------------------------


@pytest.fixture(scope="module")
def azure_registry(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(URL, container) of a `stratus serve` storing in Azurite."""
    container = azurite.new_container()
    env = azurite.environment(container, REGISTRY_HTTP_SECRET="e2e-secret")
    # no data lands under root (storage is Azurite): the server's log goes beside it
    root = tmp_path_factory.mktemp("stratus-azure") / "data"
    with pytest.MonkeyPatch.context() as patch:
        # `make test` exports a filesystem root, and a second driver would be refused
        for name in [n for n in os.environ if n.startswith("REGISTRY_")]:
            patch.delenv(name)
        with stratus_server(root, env, workers=2) as url:
            yield url, container


@needs_tools
def test_stratus_serve_over_azure_with_skopeo(azure_registry, azurite, tmp_path, tmp_path_factory) -> None:
    url, container = azure_registry
    images = images_dir(tmp_path_factory)
    small = session_image(images, "small")
    push(small.path, "v1", url, "e2e/small", "v1")
    copy = Layout(tmp_path / "small")
    pull(url, "e2e/small", "v1", copy.path, "v1")  # blob GETs are 307s that skopeo follows to Azurite
    assert_same_image(small, "v1", copy, "v1")

    multi = session_image(images, "multi")
    push(multi.path, "multi", url, "e2e/multi", "multi", "--all")
    copy = Layout(tmp_path / "multi")
    pull(url, "e2e/multi", "multi", copy.path, "multi", "--all")
    assert_same_image(multi, "multi", copy, "multi")

    manifest = small.blob(small.tagged("v1")["digest"])
    response = requests.get(f"{url}/v2/e2e/small/manifests/v1", timeout=10,
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert response.status_code == 200 and response.content == manifest

    names = committed_and_staged(azurite, container, "docker/registry/v2/")
    assert "docker/registry/v2/repositories/e2e/small/_manifests/tags/v1/current/link" in names
    assert not [n for n in names if "/_uploads/" in n]


@requires_conformance
def test_oci_conformance_suite_on_azure(azure_registry, tmp_path) -> None:
    url, _ = azure_registry
    assert run_oci_conformance(url, tmp_path).returncode == 0


# -- Entra ID credentials: OAuth to storage, user-delegation SAS ----------------------------------


@pytest.fixture(scope="module")
def azurite_oauth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    yield from start_azurite(tmp_path_factory, oauth=True)


def test_entra_credentials_sign_user_delegation_sas(azurite_oauth, monkeypatch) -> None:
    from chalicelib.storage.azure import client as azure_client

    credential = FakeEntraCredential()
    monkeypatch.setattr(azure_client, "_credential", lambda params: credential)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(azurite_oauth.certificate))  # trust Azurite's certificate
    params = {"accountname": ACCOUNT_NAME, "container": "entra", "serviceurl": azurite_oauth.blob_endpoint}
    driver = from_parameters(params)
    assert driver.params.credentials.type == "default_credentials" and driver.params.account_key is None
    driver.container.create_container()
    ctx = Context()

    writer = driver.writer(ctx, "/up/data")
    writer.write(b"through ")
    writer.close()
    writer = driver.writer(ctx, "/up/data", append=True)
    writer.write(b"a managed identity")
    writer.commit()
    driver.move(ctx, "/up/data", "/blobs/data")
    assert credential.tokens_issued >= 1

    calls = []
    original = type(driver._bind()[0]).get_user_delegation_key
    monkeypatch.setattr(type(driver._bind()[0]), "get_user_delegation_key",
                        lambda self, *a, **k: calls.append(a) or original(self, *a, **k))
    url = driver.redirect_url(ctx, "GET", "/blobs/data", 600)
    query = parse_qs(urlsplit(url).query)
    assert query["skoid"] == [FakeEntraCredential.OBJECT_ID] and query["sp"] == ["r"]
    response = requests.get(url, timeout=10, verify=str(azurite_oauth.certificate))
    assert response.status_code == 200 and response.content == b"through a managed identity"
    forged = _with_query(url, sp="rw")
    assert requests.get(forged, timeout=10, verify=str(azurite_oauth.certificate)).status_code == 403
    unsigned = url.split("?")[0]
    anonymous = requests.get(unsigned, timeout=10, verify=str(azurite_oauth.certificate))
    assert anonymous.status_code in (401, 403, 404)

    driver.redirect_url(ctx, "GET", "/blobs/data", 600)
    assert len(calls) == 1  # the delegation key is reused while it outlives the SAS


def test_reader_offers_no_fileno_so_servers_stop_at_the_range(driver, ctx) -> None:
    # gunicorn hands objects with fileno() to its file wrapper, which would read the
    # whole rest of the blob from Azure for a 10-byte Range
    driver.put_content(ctx, "/range/f", payload(3 * MiB))
    with driver.reader(ctx, "/range/f", 100) as stream:
        assert not hasattr(stream, "fileno")
        assert stream.read(10) == payload(3 * MiB)[100:110]
    driver.delete(ctx, "/range")
