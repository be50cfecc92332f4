"""Put the registry's gateway responses on the REST API `chalice deploy` made, and redeploy its stage.

    python scripts/gateway_responses.py --stage dev            # after every `chalice deploy`
    python scripts/gateway_responses.py --stage dev --print    # the responses only, as JSON

Why: a REST API remaps a Lambda proxy response's WWW-Authenticate, so with
STRATUS_GATEWAY_AUTHORIZER=true app.py's authorizer refuses requests at the gateway and
these gateway responses (app.gateway_responses) carry the challenge. Chalice cannot
express gateway responses, and `chalice deploy` overwrites the API's definition, which
drops them: run this after each deploy. It reads the stage's environment_variables from
.chalice/config.json (the registry's auth section comes from them, or from the file
REGISTRY_CONFIGURATION_PATH names) and the API's id from .chalice/deployed/<stage>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence


def stage_settings(project: Path, stage: str) -> tuple[dict[str, str], str]:
    """(the stage's environment_variables over the top-level ones, its api_gateway_stage)."""
    config = json.loads((project / ".chalice" / "config.json").read_text())
    stage_config = config.get("stages", {}).get(stage)
    if stage_config is None:
        raise SystemExit(f"no stage {stage!r} in .chalice/config.json")
    env = {**config.get("environment_variables", {}), **stage_config.get("environment_variables", {})}
    return env, stage_config.get("api_gateway_stage", config.get("api_gateway_stage", "api"))


def responses_for(project: Path, env: dict[str, str]) -> dict[str, dict]:
    if env.get("STRATUS_GATEWAY_AUTHORIZER", "").strip().lower() != "true":
        raise SystemExit("the stage does not set STRATUS_GATEWAY_AUTHORIZER=true: without the authorizer "
                         "API Gateway never sends these responses (README: Custom domain and login through a REST API)")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's app.py
    os.chdir(project)  # a relative REGISTRY_CONFIGURATION_PATH is the package's
    from chalicelib.config import load_config

    import app

    return app.gateway_responses(load_config(environ=env).auth)


def rest_api_id(project: Path, stage: str) -> str:
    deployed = project / ".chalice" / "deployed" / f"{stage}.json"
    if not deployed.exists():
        raise SystemExit(f"{deployed} not found: run `chalice deploy --stage {stage}` first")
    for resource in json.loads(deployed.read_text()).get("resources", []):
        if resource.get("resource_type") == "rest_api":
            return resource["rest_api_id"]
    raise SystemExit(f"{deployed} records no rest_api")


def put(client: Any, api_id: str, api_stage: str, responses: dict[str, dict]) -> None:
    for kind, response in responses.items():
        client.put_gateway_response(restApiId=api_id, responseType=kind, statusCode=response["statusCode"],
                                    responseParameters=response["responseParameters"],
                                    responseTemplates=response["responseTemplates"])
    # gateway responses take effect with the next deployment of the stage
    client.create_deployment(restApiId=api_id, stageName=api_stage,
                             description="stratus: gateway responses carrying the auth challenge")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--project-dir", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--print", action="store_true", help="print the responses as JSON; change nothing")
    args = parser.parse_args(argv)
    project = args.project_dir.resolve()
    env, api_stage = stage_settings(project, args.stage)
    responses = responses_for(project, env)
    if args.print:
        print(json.dumps(responses, indent=2))
        return
    import boto3

    api_id = rest_api_id(project, args.stage)
    put(boto3.client("apigateway"), api_id, api_stage, responses)
    print(f"gateway responses {', '.join(responses)} put on REST API {api_id}, stage {api_stage} redeployed")


if __name__ == "__main__":
    main()
