"""Whether a kept-alive connection can carry another request: the S3 reads' pool
(storage/s3/light.py) and the Redis reads' (cache/resp.py) ask before reusing one."""
from __future__ import annotations

import select
from typing import Any


def closed(sock: Any) -> bool:
    """Whether an idle connection's socket is gone or readable: the peer closed it (or
    sent what nobody asked for); either way it cannot carry a request. poll, where there
    is one: select refuses descriptors past 1024, which a busy server's sockets reach."""
    if sock is None:
        return True
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True
