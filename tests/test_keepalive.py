"""keepalive.closed: whether an idle kept-alive socket can carry another request."""
from __future__ import annotations

import os
import resource
import socket

import pytest

from chalicelib import keepalive


def test_open_idle_sockets_are_usable_and_closed_ones_not() -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        assert not keepalive.closed(ours)
        peer.sendall(b"unasked")  # readable: not in step any more
        assert keepalive.closed(ours)
    other, gone = socket.socketpair()
    with other:
        gone.close()  # the peer hung up
        assert keepalive.closed(other)
    assert keepalive.closed(None)


def test_descriptors_past_select_s_limit_are_answered_too() -> None:
    """A server with 1000 stalled uploads open hands its Redis and S3 sockets descriptors
    past 1024, which select() refuses: those must not all count as closed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1100:
        pytest.skip(f"the hard descriptor limit ({hard}) is under 1100")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1100), hard))
    ours, peer = socket.socketpair()
    try:
        high = os.dup2(ours.fileno(), 1050)
        with socket.socket(fileno=high) as far:
            assert not keepalive.closed(far)
            peer.close()
            assert keepalive.closed(far)
    finally:
        ours.close()
        peer.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
