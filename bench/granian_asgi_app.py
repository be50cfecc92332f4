"""The Stratus ASGI app (chalicelib/adapters/asgi.py) for granian (`granian --interface asgi
bench.granian_asgi_app:app`): only bench.availability uses it, to measure granian
as the ASGI host against uvicorn; configuration comes from REGISTRY_* as for `stratus serve`.
"""
from chalicelib.adapters.asgi import ASGIApp, Limits
from chalicelib.bootstrap import build_api
from chalicelib.config import load_config

_config = load_config()
app = ASGIApp(
    build_api(_config),
    Limits(read_timeout=_config.http.timeouts.read, max_uploads=_config.http.max_concurrent_uploads),
)
