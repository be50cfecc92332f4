"""Adapters: each turns one platform's requests into the api's Request and its Response
back, around the process's one owner (chalicelib.bootstrap.Stratus), and does nothing else.

- server.py, server_uvicorn.py, asgi.py: `stratus serve` (uvicorn by default; granian and
  gunicorn over WSGI), with TLS, unix sockets, drain and the access log;
- apigateway.py, chalice.py: API Gateway events and the Chalice app's glue (app.py);
- azurefunctions.py: Azure Functions (azure_func/function_app.py);
- cli.py: the `stratus` command.

Nothing is imported here: a Lambda cold start imports only the modules it uses.
"""
