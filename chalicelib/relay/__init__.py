"""`stratus relay`: a local registry endpoint that unmodified clients push to and pull
from, forwarding to an upstream registry and sending blobs the way it can take them
(direct-to-storage parts, or chunks within its limit). See docs/relay.md.

Modules, one concern each: upstream (the HTTP client and Location rewriting), app
(routing and forwarding), uploads (client uploads in progress), pieces (spooling a body
into pieces), senders (chunked and direct), journal and resume (continuing an
interrupted upload), progress (the log), cli (the command).
"""
