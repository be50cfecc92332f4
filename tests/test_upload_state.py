"""The signed `_state` token of upload Locations."""
from __future__ import annotations

import pytest

from chalicelib.api.upload_state import InvalidStateError, StateSigner, UploadState

STATE = UploadState("team/app", "8b1c3f0e-2f4c-4d5e-9a6b-7c8d9e0f1a2b", 8388608, "2026-11-27T21:00:00Z")


def test_round_trip():
    signer = StateSigner(b"secret")
    assert signer.unpack(signer.pack(STATE)) == STATE


def test_another_secret_refuses_the_token():
    with pytest.raises(InvalidStateError):
        StateSigner(b"other").unpack(StateSigner(b"secret").pack(STATE))


def test_every_altered_character_is_refused():
    """Including changes base64 decoding forgives (the unused bits of the last character)."""
    signer = StateSigner(b"secret")
    token = signer.pack(STATE)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for position in (0, len(token) // 2, token.index(".") - 1, len(token) - 1):
        for replacement in alphabet:
            if replacement == token[position] or token[position] == ".":
                continue
            forged = token[:position] + replacement + token[position + 1:]
            with pytest.raises(InvalidStateError):
                signer.unpack(forged)


@pytest.mark.parametrize("token", ["", ".", "garbage", "a.b.c", "!!!.???", "e30.", "e30"])
def test_malformed_tokens_are_refused(token):
    with pytest.raises(InvalidStateError):
        StateSigner(b"secret").unpack(token)
