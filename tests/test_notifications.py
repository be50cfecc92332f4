"""Webhook notifications through `stratus serve`: the reference's envelope, field by field,
for the push of a three-layer image; and the same push through registry:2 itself with the
same endpoint configuration, compared event by event (ids, timestamps aside)."""
from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any, Iterator

import pytest

from .clients_servers import REFERENCE_REGISTRY, clean_env, isolated_process, needs_reference
from .notifications_receiver import Receiver, receiver
from .oci_client import OCI_MANIFEST, Registry, sha256, unique_repo
from .servers import free_port, stratus_server

EVENTS_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
GO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")
EVENT_KEYS = ["id", "timestamp", "action", "target", "request", "actor", "source"]


def notifications_yaml(url: str, **endpoint: Any) -> str:
    lines = ["notifications:", "  endpoints:", "    - name: receiver", f"      url: {url}",
             "      headers:", "        Authorization: [Bearer test-token]", "      timeout: 2s",
             "      threshold: 3", "      backoff: 100ms"]
    lines += [f"      {key}: {json.dumps(value)}" for key, value in endpoint.items()]
    return "\n".join(lines) + "\n"


def write_config(tmp_path: Path, text: str, name: str = "config.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def webhook() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


def push_three_layers(url: str, repo: str, tag: str = "v1"):
    registry = Registry(url)
    try:
        return registry.push_image(repo, tag, layers=3)
    finally:
        registry.close()


def expected_push_events(base: str, repo: str, image: Any, tag: str) -> list[dict[str, Any]]:
    """What registry:2's bridge sends for the push: each blob's commit, then the manifest."""
    blobs = [image.config] + list(image.layers)
    events = [{"action": "push", "target": {
        "mediaType": "application/octet-stream", "size": len(b), "digest": sha256(b), "length": len(b),
        "repository": repo, "url": f"{base}/v2/{repo}/blobs/{sha256(b)}"}} for b in blobs]
    events.append({"action": "push", "target": {
        "mediaType": OCI_MANIFEST, "size": len(image.body), "digest": image.digest, "length": len(image.body),
        "repository": repo, "url": f"{base}/v2/{repo}/manifests/{image.digest}", "tag": tag}})
    return events


def assert_envelope_fields(event: dict[str, Any], method: str, host: str) -> None:
    """The parts of an event that are not the target: present, in the reference's order and form."""
    assert list(event) == EVENT_KEYS
    assert UUID.match(event["id"]), event["id"]
    assert GO_TIME.match(event["timestamp"]), event["timestamp"]
    request = event["request"]
    assert list(request) == ["id", "addr", "host", "method", "useragent"]
    assert UUID.match(request["id"]) or request["id"]
    assert request["addr"].split(":")[0] == "127.0.0.1"
    assert request["host"] == host
    assert request["method"] == method
    assert request["useragent"].startswith("python-requests/")
    assert event["actor"] == {}
    assert list(event["source"]) == ["addr", "instanceID"]
    assert event["source"]["addr"].split(":")[0] == socket.gethostname()
    assert UUID.match(event["source"]["instanceID"])


def test_push_of_three_layer_image_sends_the_reference_events(tmp_path: Path, webhook: Receiver) -> None:
    config = write_config(tmp_path, notifications_yaml(webhook.url))
    repo, tag = unique_repo("notify"), "v1"
    with stratus_server(tmp_path / "root", config=config) as url:
        image = push_three_layers(url, repo, tag)
        events = webhook.wait_events(5)
    assert len(events) == 5 and len(webhook.deliveries) == 5  # one event per envelope, as the reference
    for delivery in webhook.deliveries:
        assert delivery.path == "/events"
        assert delivery.headers["Content-Type"] == EVENTS_MEDIA_TYPE
        assert delivery.headers["Authorization"] == "Bearer test-token"  # the endpoint's headers
        assert delivery.body.startswith(b'{\n   "events": [\n      {\n         "id": ')  # MarshalIndent, 3 spaces
    host = url.partition("://")[2]
    for event in events:
        assert_envelope_fields(event, "PUT", host)
    got = [{"action": e["action"], "target": e["target"]} for e in events]
    assert got == expected_push_events(url, repo, image, tag)
    assert [list(e["target"]) for e in got] == [list(e["target"]) for e in expected_push_events(url, repo, image, tag)]
    instances = {e["source"]["instanceID"] for e in events}
    assert len(instances) == 1 and len({e["id"] for e in events}) == 5


def test_pull_and_delete_events(tmp_path: Path, webhook: Receiver) -> None:
    text = notifications_yaml(webhook.url) + "  events:\n    includereferences: true\n" \
        + "storage:\n  delete:\n    enabled: true\n"
    config = write_config(tmp_path, text)
    repo = unique_repo("notify")
    with stratus_server(tmp_path / "root", config=config) as url:
        image = push_three_layers(url, repo)
        webhook.wait_events(5)
        registry = Registry(url)
        assert registry.manifest(repo, "v1").status_code == 200
        layer = sha256(image.layers[0])
        assert registry.blob(repo, layer).status_code == 200
        assert registry.delete(f"/v2/{repo}/blobs/{layer}").status_code == 202
        assert registry.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202
        registry.close()
        events = webhook.wait_events(10)[5:]
    pull, blob_pull, blob_delete, manifest_delete, tag_delete = events
    assert [e["action"] for e in events] == ["pull", "pull", "delete", "delete", "delete"]
    assert tag_delete["target"] == {"repository": repo, "tag": "v1"}  # the tag the delete removed
    references = [{"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(image.config),
                   "digest": sha256(image.config)}] + [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": len(b), "digest": sha256(b)}
        for b in image.layers]
    assert pull["target"] == {"mediaType": OCI_MANIFEST, "size": len(image.body), "digest": image.digest,
                              "length": len(image.body), "repository": repo,
                              "url": f"{url}/v2/{repo}/manifests/{image.digest}", "tag": "v1",
                              "references": references}
    assert pull["request"]["method"] == "GET"
    assert blob_pull["target"] == {"mediaType": "application/octet-stream", "size": len(image.layers[0]),
                                   "digest": layer, "length": len(image.layers[0]), "repository": repo,
                                   "url": f"{url}/v2/{repo}/blobs/{layer}"}
    assert blob_delete["target"] == {"digest": layer, "repository": repo}
    assert manifest_delete["target"] == {"digest": image.digest, "repository": repo}
    assert manifest_delete["request"]["method"] == "DELETE"


def test_ignored_actions_and_media_types_are_not_sent(tmp_path: Path, webhook: Receiver) -> None:
    config = write_config(tmp_path, notifications_yaml(
        webhook.url, ignoredmediatypes=["application/octet-stream"], ignore={"actions": ["pull"]}))
    repo = unique_repo("notify")
    with stratus_server(tmp_path / "root", config=config) as url:
        image = push_three_layers(url, repo)
        registry = Registry(url)
        assert registry.manifest(repo, "v1").status_code == 200  # a pull: ignored
        registry.close()
        image2 = push_three_layers(url, repo, "v2")  # its manifest push is the next event sent
        events = webhook.wait_events(2)
    assert [(e["action"], e["target"]["digest"]) for e in events] == [("push", image.digest), ("push", image2.digest)]


def test_actor_is_the_basic_user(tmp_path: Path, webhook: Receiver) -> None:
    import bcrypt

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_bytes(b"alice:" + bcrypt.hashpw(b"secret", bcrypt.gensalt(4)) + b"\n")
    text = notifications_yaml(webhook.url) + f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n"
    config = write_config(tmp_path, text)
    repo = unique_repo("notify")
    with stratus_server(tmp_path / "root", config=config) as url:
        registry = Registry(url)
        registry.session.auth = ("alice", "secret")
        registry.push_blob(repo, b"hello")
        registry.close()
        (event,) = webhook.wait_events(1)
    assert event["actor"] == {"name": "alice"}


# ------------------------------------------------------------------ registry:2 itself


def reference_yaml(root: Path, port: int, url: str) -> str:
    return ("version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n"
            "  maintenance:\n    uploadpurging:\n      enabled: false\n"
            f"http:\n  addr: 127.0.0.1:{port}\n  secret: notify-secret\n" + notifications_yaml(url) + REFERENCES)


REFERENCES = "  events:\n    includereferences: true\n"
ACCEPT = {"Accept": OCI_MANIFEST}  # registry:2 answers 404 for an OCI manifest unless the client accepts it


def pull_then_delete(url: str, repo: str, image: Any) -> None:
    """Pulls (manifest by tag, blob HEAD and GET), then deletes (a blob, the manifest by digest)."""
    registry = Registry(url)
    layer = sha256(image.layers[0])
    assert registry.manifest(repo, "v1", headers=ACCEPT).status_code == 200
    assert registry.head(f"/v2/{repo}/manifests/{image.digest}", headers=ACCEPT).status_code == 200
    assert registry.head(f"/v2/{repo}/blobs/{layer}").status_code == 200
    assert registry.blob(repo, layer).status_code == 200
    mounted = registry.start_upload(f"{repo}-copy", mount=layer, **{"from": repo})
    assert mounted.status_code == 201, mounted.text
    assert registry.delete(f"/v2/{repo}/blobs/{layer}").status_code == 202
    assert registry.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202
    registry.close()


def without_volatile(event: dict[str, Any], base: str) -> dict[str, Any]:
    """ids, timestamps, the source node and the ports are each registry's own."""
    event = json.loads(json.dumps(event).replace(base, "BASE"))
    request = event["request"]
    return {"keys": list(event), "action": event["action"], "target": event["target"],
            "target_keys": list(event["target"]), "request_keys": list(request),
            "request": {"addr": request["addr"].split(":")[0], "host": request["host"].replace(base[7:], "HOST"),
                        "method": request["method"], "useragent": request["useragent"]},
            "actor": event["actor"], "source_keys": list(event["source"])}


@needs_reference
def test_same_push_as_registry_2(tmp_path: Path) -> None:
    """registry:2 and Stratus, the same YAML (Stratus reads registry:2's), one receiver each."""
    repo, tag = unique_repo("notify"), "v1"
    with receiver() as theirs, receiver() as ours:
        port = free_port()
        reference_root = tmp_path / "reference" / "root"
        reference_root.mkdir(parents=True)
        config = write_config(tmp_path / "reference", reference_yaml(reference_root, port, theirs.url))
        with isolated_process([REFERENCE_REGISTRY, "serve", str(config)], port, clean_env({}),
                              tmp_path / "reference.log"):
            reference_url = f"http://127.0.0.1:{port}"
            image = push_three_layers(reference_url, repo, tag)
            pull_then_delete(reference_url, repo, image)
            expected = theirs.wait_events(13)
        stratus_root = tmp_path / "stratus" / "root"
        stratus_root.mkdir(parents=True)
        stratus_config = write_config(tmp_path / "stratus", notifications_yaml(ours.url) + REFERENCES
                                      + "storage:\n  delete:\n    enabled: true\n")
        with stratus_server(stratus_root, config=stratus_config) as url:
            registry = Registry(url)
            for blob in [image.config] + list(image.layers):  # the very same bytes
                registry.push_blob(repo, blob)
            registry.push_manifest(repo, tag, image.body, image.media_type)
            registry.close()
            pull_then_delete(url, repo, image)
            got = ours.wait_events(13)
    assert len(expected) == len(got) == 13
    assert [e["action"] for e in got] == ["push"] * 5 + ["pull"] * 4 + ["mount"] + ["delete"] * 3
    assert got[6]["request"]["method"] == "HEAD" and len(got[6]["target"]["references"]) == 4  # read from storage
    assert got[9]["target"]["fromRepository"] == repo and got[9]["target"]["repository"] == f"{repo}-copy"
    assert theirs.deliveries[0].headers["Content-Type"] == ours.deliveries[0].headers["Content-Type"]
    assert [without_volatile(e, url) for e in got] == [without_volatile(e, reference_url) for e in expected]
