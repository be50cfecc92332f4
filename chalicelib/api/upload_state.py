"""The `_state` token carried in upload Locations.

Upload requests land on stateless functions, so what a server would keep in memory
(which upload, how far it got, when it started) travels with the client, signed
with HMAC-SHA256 under `http.secret` so it cannot be forged or replayed elsewhere.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Union


class InvalidStateError(ValueError):
    pass


@dataclass(frozen=True)
class UploadState:
    name: str
    upload_id: str
    offset: int
    started_at: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StateSigner:
    """Signs and checks `_state` tokens with the secret, or with what `secret()` returns.

    A callable is asked once, on the first token signed or checked: a secret kept in
    SSM or Secrets Manager then costs boto3 and a network call only to an instance
    that serves an upload, not to every cold start. A failed fetch is retried by the
    next request."""

    def __init__(self, secret: Union[bytes, Callable[[], bytes]]):
        self._secret: Optional[bytes] = secret if isinstance(secret, bytes) else None
        self._source: Optional[Callable[[], bytes]] = None if isinstance(secret, bytes) else secret
        self._lock = threading.Lock()

    def _key(self) -> bytes:
        if self._secret is None:
            with self._lock:
                if self._secret is None:
                    assert self._source is not None  # set whenever no secret was given
                    self._secret = self._source()
        return self._secret

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key(), payload, hashlib.sha256).digest()

    def pack(self, state: UploadState) -> str:
        payload = json.dumps(
            {"n": state.name, "u": state.upload_id, "o": state.offset, "s": state.started_at},
            separators=(",", ":"),
        ).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def unpack(self, token: str) -> UploadState:
        try:
            payload_text, mac_text = token.split(".", 1)
            payload = _unb64(payload_text)
        except (ValueError, TypeError):
            raise InvalidStateError("malformed upload state") from None
        # Compared as text: base64 decoding forgives altered padding bits, so two
        # different tokens could otherwise carry the same bytes. Only the exact
        # token we issued is accepted.
        expected = _b64(self._mac(payload))
        if _b64(payload) != payload_text or not hmac.compare_digest(mac_text.encode(), expected.encode()):
            raise InvalidStateError("upload state signature mismatch")
        try:
            doc = json.loads(payload)
            state = UploadState(str(doc["n"]), str(doc["u"]), int(doc["o"]), str(doc["s"]))
        except (ValueError, KeyError, TypeError):
            raise InvalidStateError("malformed upload state") from None
        return state
