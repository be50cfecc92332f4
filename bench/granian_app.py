"""The Stratus WSGI app for granian (`granian --interface wsgi bench.granian_app:app`).

Only bench.compare_servers uses it, to measure granian against the server
`stratus serve` runs; configuration comes from REGISTRY_* as for `stratus serve`.
"""
from chalicelib.bootstrap import build_api
from chalicelib.config import load_config
from chalicelib.adapters.server import wsgi_app

app = wsgi_app(build_api(load_config()))
