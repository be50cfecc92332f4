"""Stratus on Azure Functions (Python v2 programming model).

One anonymous HTTP function takes every /v2/ request (host.json sets an empty
route prefix) and hands it to the same framework-neutral api as the Lambda and
the self-hosted server; a timer purges abandoned uploads. Configuration comes
from REGISTRY_* app settings, e.g. REGISTRY_STORAGE=azure and
REGISTRY_STORAGE_AZURE_ACCOUNTNAME / _CONTAINER (managed identity when no key).
"""
from __future__ import annotations

import logging
import os
import sys

import azure.functions as func

try:
    import chalicelib  # noqa: F401 - packaged next to this file for deployment
except ImportError:  # running from a checkout: the library lives one level up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from chalicelib.azurefunctions import FunctionsRegistry  # noqa: E402

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]

registry = FunctionsRegistry()
app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.function_name("registry")
@app.route(route="v2/{*path}", methods=METHODS, auth_level=func.AuthLevel.ANONYMOUS)
def registry_http(req: func.HttpRequest) -> func.HttpResponse:
    return registry.handle(req)


@app.function_name("purge_uploads")
@app.timer_trigger(arg_name="timer", schedule="0 17 3 * * *", run_on_startup=False, use_monitor=True)
def purge_uploads(timer: func.TimerRequest) -> None:
    removed = registry.purge_uploads()
    logging.getLogger("stratus").info("upload purge removed %d upload(s)", len(removed))
