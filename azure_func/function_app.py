"""Stratus on Azure Functions (Python v2 programming model).

One anonymous HTTP function takes every /v2/ request (host.json sets an empty
route prefix) and hands it to the same framework-neutral api as the Lambda and
the self-hosted server; a timer purges abandoned uploads. Configuration comes
from REGISTRY_* app settings, e.g. REGISTRY_STORAGE=azure and
REGISTRY_STORAGE_AZURE_ACCOUNTNAME / _CONTAINER (managed identity when no key).

With the azurefunctions-extensions-http-fastapi package installed and the app
setting PYTHON_ENABLE_INIT_INDEXING=1, the function takes the worker's streamed
FastAPI Request, so request bodies (whole docker layers) are never held in memory.
Without either it takes the classic azure.functions.HttpRequest, whose body the
host hands over whole.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

import azure.functions as func

try:
    import chalicelib  # noqa: F401 - packaged next to this file for deployment
except ImportError:  # running from a checkout: the library lives one level up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from chalicelib.adapters.azurefunctions import FunctionsRegistry  # noqa: E402

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]

registry = FunctionsRegistry()
app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


def streaming_types() -> Optional[tuple[type, type]]:
    """The extension's Request and Response types if the worker will stream HTTP.

    The worker proxies HTTP to its own server only when it indexes the app at init
    (PYTHON_ENABLE_INIT_INDEXING, read as the worker reads it) and the extension is
    imported; then it insists on these annotations, and otherwise on HttpRequest. So
    the extension is imported only when that setting is on: merely installed, it
    would switch the worker to a mode the host never starts."""
    if os.environ.get("PYTHON_ENABLE_INIT_INDEXING", "").strip().lower() not in ("1", "true", "t", "yes", "y"):
        return None
    try:
        from azurefunctions.extensions.http.fastapi import Request, Response
    except ImportError:
        return None
    return Request, Response


STREAMING = streaming_types()

if STREAMING is not None:
    # Module globals, so the worker's typing.get_type_hints() resolves the annotations.
    StreamRequest, StreamResponse = STREAMING

    @app.function_name("registry")
    @app.route(route="v2/{*path}", methods=METHODS, auth_level=func.AuthLevel.ANONYMOUS)
    async def registry_http(req: StreamRequest) -> StreamResponse:  # type: ignore[valid-type]  # runtime types
        return await registry.handle_stream(req)

else:

    @app.function_name("registry")
    @app.route(route="v2/{*path}", methods=METHODS, auth_level=func.AuthLevel.ANONYMOUS)
    def registry_http(req: func.HttpRequest) -> func.HttpResponse:
        return registry.handle(req)


@app.function_name("purge_uploads")
@app.timer_trigger(arg_name="timer", schedule="0 17 3 * * *", run_on_startup=False, use_monitor=True)
def purge_uploads(timer: func.TimerRequest) -> None:
    removed = registry.purge_uploads()
    logging.getLogger("stratus").info("upload purge removed %d upload(s)", len(removed))


@app.function_name("collect_garbage")
@app.timer_trigger(arg_name="timer", schedule="0 */15 * * * *", run_on_startup=False, use_monitor=True)
def collect_garbage(timer: func.TimerRequest) -> None:
    """Every 15 minutes: garbage collection with retention, continued from its checkpoint
    (_gc/checkpoint) until done; a new run starts once storage.maintenance.gc.interval
    has passed since the last ended (chalicelib/registry/maintenance.py)."""
    summary = registry.collect_garbage()
    logging.getLogger("stratus").info("scheduled gc: %s", summary)
