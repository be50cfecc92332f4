"""REGISTRY_* values that config.env_scalar reads without the YAML parser must mean
exactly what PyYAML's safe loader makes of them, and a cold start with such values
imports no yaml."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from hypothesis import given, settings, strategies as st

from chalicelib.config import env_scalar

REPO = Path(__file__).resolve().parent.parent
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
ALPHABET = "aAzZyYnNoOeEsStTfFlLuUxX0123456789_./:@+-~#!&*?|>'\"%=,[]{} \t"


def agrees(text: str) -> None:
    plain, value = env_scalar(text)
    if plain:
        parsed = yaml.load(text, Loader=LOADER)
        assert parsed == value and type(parsed) is type(value), (text, value, parsed)


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=12) | st.text(alphabet=ALPHABET[:44], max_size=8)
       | st.text(alphabet="0123456789.:", max_size=16))
def test_plain_values_agree_with_yaml(text: str) -> None:
    agrees(text)


def test_known_values() -> None:
    for text in ("s3", "us-east-1", "my-bucket.example", "redis.cache.amazonaws.com:6379", "http://h:5000/x",
                 "inmemory", "0", "5000", "a:b", "x@y", "on", "Off", "NULL", "yes", "y", "n", "a:", "0123",
                 "1_000", "1:20", "2001-12-14", "127.0.0.1:6379", "10.0.0.1", "1.2.3", "1.2", "0.0.0.0:5000",
                 "1:2:3.4", "190:20:30.15", ".inf", "~", "", "true", "-1", "+1", "1e3", "a b", "a #b"):
        agrees(text)
    assert env_scalar("us-east-1") == (True, "us-east-1")
    assert env_scalar("5000") == (True, 5000)
    assert env_scalar("127.0.0.1:6379") == (True, "127.0.0.1:6379")
    assert env_scalar("true") == (True, True) and env_scalar("OFF") == (True, False)
    assert env_scalar("") == (True, None) and env_scalar("~") == (True, None)
    for text in ("a:", "0123", "1:20", "{a: 1}", "a b", "'q'", "1.5", "-1"):
        assert env_scalar(text)[0] is False, text


def test_a_cold_config_from_plain_values_imports_no_yaml() -> None:
    code = """
import sys
from chalicelib.config import load_config
config = load_config(None, environ={"REGISTRY_STORAGE": "s3", "REGISTRY_STORAGE_S3_BUCKET": "b",
    "REGISTRY_STORAGE_S3_REGION": "us-east-1", "REGISTRY_REDIS_ADDR": "cache.local:6379", "REGISTRY_HTTP_ADDR": "0.0.0.0:5000",
    "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": "redis", "REGISTRY_HTTP_HOST": "https://registry.example.com",
    "REGISTRY_REDIS_DB": "2"})
assert config.storage.driver == "s3" and config.storage.parameters["bucket"] == "b" and config.redis.addr == "cache.local:6379" and config.redis.db == 2
assert "yaml" not in sys.modules
assert load_config(None, environ={"REGISTRY_STORAGE_DELETE_ENABLED": "false"}).storage.delete_enabled is False
assert "yaml" not in sys.modules
config = load_config(None, environ={"REGISTRY_HTTP_HEADERS": "{X-A: [b]}"})
assert config.http.headers == {"X-A": ["b"]} and "yaml" in sys.modules
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=60)
