"""infra/terraform, checked with the real terraform (issue 13, item 4).

* Both modules are formatted and every `var.`, `local.` and resource reference in
  them names something declared (offline, no provider needed).
* The AWS module is initialised from the local provider directory (found at test
  time: the CLI configuration's filesystem mirror, the plugin cache, the implicit
  local mirror directories, then a bounded search of /opt) and validated offline.
* The AWS module is applied, in its complete VPC form (ElastiCache with TLS and
  AUTH, VPC endpoints, security-group rules, the EventBridge purge schedule), to
  moto's server through the provider's endpoint overrides, and what it made is
  read back from moto: the functions' environment, the role's policy, the network,
  the cache, the schedule.
* Plans check the variable validations and the IAM grant for a Secrets Manager secret.

Without terraform or the hashicorp/aws provider the tests skip, saying so (and fail
under CI=true, tests/components.py). The azurerm provider is not carried offline,
so for the Azure module `terraform validate` is not applicable here.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from tests.components import needs, not_applicable, require
from tests.moto_server import ACCESS_KEY, REGION, SECRET_KEY, MotoS3

REPO = Path(__file__).resolve().parent.parent
MODULES = REPO / "infra" / "terraform"
TERRAFORM = shutil.which("terraform")
ACCOUNT = "123456789012"  # moto's

# -- finding the providers ------------------------------------------------------------------------


def _cli_config_dirs() -> list[Path]:
    """Directories the CLI configuration names: filesystem_mirror paths, plugin_cache_dir."""
    config = os.environ.get("TF_CLI_CONFIG_FILE") or os.environ.get("TERRAFORM_CONFIG") or "~/.terraformrc"
    path = Path(config).expanduser()
    if not path.is_file():
        return []
    text = path.read_text(errors="replace")
    found = re.findall(r'filesystem_mirror\s*\{[^}]*?path\s*=\s*"([^"]+)"', text, re.S)
    found += re.findall(r'plugin_cache_dir\s*=\s*"([^"]+)"', text)
    return [Path(p).expanduser() for p in found]


def _implicit_dirs() -> list[Path]:
    """terraform's implicit local mirror directories on Linux, and the plugin cache."""
    home = Path.home()
    data_home = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    data_dirs = (os.environ.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share").split(":")
    dirs = [home / ".terraform.d" / "plugins", data_home / "terraform" / "plugins"]
    dirs += [Path(d) / "terraform" / "plugins" for d in data_dirs if d]
    if os.environ.get("TF_PLUGIN_CACHE_DIR"):
        dirs.append(Path(os.environ["TF_PLUGIN_CACHE_DIR"]))
    return dirs


def _searched_dirs() -> list[Path]:
    """Mirrors laid out under /opt (<dir>/registry.terraform.io/...), two levels deep at most."""
    found = []
    for pattern in ("*/registry.terraform.io", "*/*/registry.terraform.io"):
        found += [p.parent for p in sorted(Path("/opt").glob(pattern))]
    return found


def plugin_dir(provider: str) -> Optional[Path]:
    """A directory `terraform init -plugin-dir=` can install hashicorp/<provider> from."""
    override = os.environ.get("STRATUS_TERRAFORM_PLUGIN_DIR")
    candidates = ([Path(override)] if override else []) + _cli_config_dirs() + _implicit_dirs() + _searched_dirs()
    for directory in candidates:
        binaries = directory.glob(f"registry.terraform.io/hashicorp/{provider}/*/linux_amd64/terraform-provider-{provider}*")
        if any(b.is_file() and os.access(b, os.X_OK) for b in binaries):
            return directory
    return None


AWS_PLUGINS = plugin_dir("aws") if TERRAFORM else None
AZURERM_PLUGINS = plugin_dir("azurerm") if TERRAFORM else None
NO_TERRAFORM = None if TERRAFORM else "terraform is not on PATH"
NO_AWS_PROVIDER = NO_TERRAFORM or (None if AWS_PLUGINS else (
    "the hashicorp/aws provider is in no local plugin directory (CLI config mirror, "
    "~/.terraform.d/plugins, XDG data dirs, TF_PLUGIN_CACHE_DIR, /opt/*; or set STRATUS_TERRAFORM_PLUGIN_DIR)"))
needs_terraform = needs("terraform", NO_TERRAFORM)
needs_aws_provider = needs("terraform's hashicorp/aws provider", NO_AWS_PROVIDER)


# -- running terraform --------------------------------------------------------------------------


def terraform_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TF_VAR_", "ARM_"))}
    # no version check against the network, no prompts, and no credentials of the caller's
    env.update(CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1", TF_INPUT="0")
    return env


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def terraform(workdir: Path, *args: str, check: bool = True, timeout: float = 600) -> Run:
    start = time.monotonic()
    out = subprocess.run([TERRAFORM, *args], cwd=workdir, env=terraform_env(), capture_output=True,
                         text=True, timeout=timeout)
    run = Run(out.returncode, out.stdout, out.stderr, time.monotonic() - start)
    if check:
        assert run.returncode == 0, f"terraform {' '.join(args)} failed:\n{run.stderr[-4000:]}\n{run.stdout[-2000:]}"
    return run


def copy_module(name: str, to: Path) -> Path:
    """The module's .tf files alone (no state, lock file or .terraform of a developer's)."""
    to.mkdir(parents=True, exist_ok=True)
    for tf in (MODULES / name).glob("*.tf"):
        shutil.copy(tf, to / tf.name)
    return to


def init(workdir: Path, plugins: Path) -> Run:
    return terraform(workdir, "init", "-input=false", "-backend=false", f"-plugin-dir={plugins}")


# -- offline: format and references ------------------------------------------------------------

_BLOCK = re.compile(r'^(resource|data|ephemeral)\s+"([\w-]+)"\s+"([\w-]+)"', re.M)
_VARIABLE = re.compile(r'^variable\s+"(\w+)"', re.M)
_LOCALS = re.compile(r"^locals\s*\{(.*?)^\}", re.M | re.S)
_LOCAL_NAME = re.compile(r"^  (\w+)\s*=", re.M)


def _strip_comments(text: str) -> str:
    return re.sub(r"(?m)^\s*#.*$|\s#.*$", "", text)


def undeclared_references(module: Path) -> list[str]:
    """References to variables, locals, resources, data sources or ephemeral resources the
    module does not declare, and variables it declares but never uses."""
    text = "\n".join(_strip_comments(tf.read_text()) for tf in sorted(module.glob("*.tf")))
    variables = set(_VARIABLE.findall(text))
    locals_ = {name for block in _LOCALS.findall(text) for name in _LOCAL_NAME.findall(block)}
    declared = {(kind, rtype, name) for kind, rtype, name in _BLOCK.findall(text)}
    problems = [f"var.{v}" for v in sorted(set(re.findall(r"\bvar\.(\w+)", text)) - variables)]
    problems += [f"local.{v}" for v in sorted(set(re.findall(r"\blocal\.(\w+)", text)) - locals_)]
    problems += [f"unused variable {v}" for v in sorted(variables - set(re.findall(r"\bvar\.(\w+)", text)))]
    providers = ("aws_", "azurerm_")
    for kind, prefix in (("data", r"\bdata\."), ("ephemeral", r"\bephemeral\."), ("resource", r"(?<![\w.\"])")):
        for rtype, name in re.findall(prefix + r"((?:aws|azurerm)_\w+)\.(\w+)", text):
            if rtype.startswith(providers) and (kind, rtype, name) not in declared:
                problems.append(f"{kind} {rtype}.{name}")
    return sorted(set(problems))


@needs_terraform
def test_both_modules_are_formatted() -> None:
    run = terraform(MODULES, "fmt", "-check", "-recursive", "-diff", check=False)
    assert run.returncode == 0, f"terraform fmt would change:\n{run.stdout}{run.stderr}"


@pytest.mark.parametrize("module", ["aws", "azure"])
def test_every_reference_names_a_declaration(module: str) -> None:
    assert undeclared_references(MODULES / module) == []


def test_the_reference_check_catches_a_typo(tmp_path: Path) -> None:
    broken = copy_module("aws", tmp_path / "aws")
    main = broken / "main.tf"
    main.write_text(main.read_text().replace("var.bucket_name", "var.bucket_nmae", 1)
                    .replace("aws_s3_bucket.registry.arn", "aws_s3_bucket.registy.arn", 1))
    assert undeclared_references(broken) == [
        "resource aws_s3_bucket.registy", "unused variable bucket_name", "var.bucket_nmae"]


def test_no_random_provider() -> None:
    """Not available offline, and not needed: secrets come from Secrets Manager's
    generator (AWS) or uuid() (Azure, kept by ignore_changes)."""
    for module in ("aws", "azure"):
        text = "\n".join(tf.read_text() for tf in (MODULES / module).glob("*.tf"))
        assert not re.search(r'source\s*=\s*"hashicorp/random"', text)
        assert not re.search(r'"random_\w+"|(?<![\w.])random_\w+\.', text)  # no random_* resource or reference


def test_azure_secret_is_a_key_vault_reference() -> None:
    text = (MODULES / "azure" / "main.tf").read_text()
    setting = re.search(r"^\s*REGISTRY_HTTP_SECRET\s*=\s*(.+)$", text, re.M)
    assert setting and setting.group(1).strip() == "local.http_secret_reference"
    assert re.search(r'http_secret_reference\s*=\s*"@Microsoft\.KeyVault\(SecretUri=\$\{azurerm_key_vault_secret\.'
                     r'http_secret\.versionless_id\}\)"', text)
    # the app's identity may read secrets of that vault
    assert re.search(r'"app_secrets"\s*\{[^}]*Key Vault Secrets User[^}]*identity\[0\]\.principal_id', text, re.S)


# -- offline: init and validate ----------------------------------------------------------------


@needs_aws_provider
def test_aws_module_validates_offline(applied: Applied) -> None:
    """terraform validate after an init from the local plugin directory alone (run
    beside the apply, in a workdir of its own)."""
    run = applied.validations[("validate",)]
    doc = json.loads(run.stdout)
    assert run.returncode == 0 and doc["valid"] is True and doc["error_count"] == 0, doc
    print(f"\nterraform validate (offline, providers from {AWS_PLUGINS}): {run.seconds:.1f} s")


@needs_terraform
@not_applicable(AZURERM_PLUGINS is None,
                "the azurerm provider is not carried offline (only hashicorp/aws); the Azure module is "
                "checked by fmt and the reference check")
def test_azure_module_validates_offline(tmp_path: Path) -> None:
    workdir = copy_module("azure", tmp_path / "azure")
    init(workdir, AZURERM_PLUGINS)
    doc = json.loads(terraform(workdir, "validate", "-json").stdout)
    assert doc["valid"] is True, doc


# -- against moto -------------------------------------------------------------------------------


# variables a plan must refuse (on top of the applied tfvars: in a VPC, Redis created), and
# what it must say; a failed validation stops those of variables that refer to it, so
# each case fails one rule (two independent ones in the last)
INCONSISTENT: dict[tuple[str, ...], tuple[str, ...]] = {
    ("subnet_ids=[]", "create_redis=false", "redis_addr=cache.example.internal:6379"): ("redis_addr needs subnet_ids",),
    ("redis_addr=cache.example.internal:6379",): ("redis_addr and create_redis exclude each other",),
    ("subnet_ids=[]", "http_secret_parameter=arn:aws:s3:::not-a-secret"): (
        "create_redis needs subnet_ids", "http_secret_parameter: an SSM parameter name"),
    ("redis_password_parameter=/stratus/redis-token",): (
        "redis_password_parameter is the token of an existing Redis",),
}


def plan_in(workdir: Path, *variables: str) -> Run:
    args = [f"-var={v}" for v in variables]
    return terraform(workdir, "plan", "-input=false", "-refresh=false", "-no-color", *args, check=False)


def plan(applied: Applied, *variables: str) -> Run:
    return plan_in(applied.workdir, *variables)


def moto_override(endpoint: str) -> str:
    """A provider override file: every service the module calls goes to moto's server."""
    services = ["apigatewayv2", "cloudwatchlogs", "ec2", "elasticache", "events", "iam", "lambda", "s3",
                "secretsmanager", "ssm", "sts"]
    endpoints = "\n".join(f'    {s} = "{endpoint}"' for s in services)
    return f"""provider "aws" {{
  access_key                  = "{ACCESS_KEY}"
  secret_key                  = "{SECRET_KEY}"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  s3_use_path_style           = true
  endpoints {{
{endpoints}
  }}
}}
"""


def lambda_zip(path: Path) -> Path:
    """app.py and chalicelib/: what the functions are created with (moto stores it, runs nothing)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(REPO / "app.py", "app.py")
        for f in sorted((REPO / "chalicelib").rglob("*.py")):
            zf.write(f, str(f.relative_to(REPO)))
    return path


@dataclass
class Network:
    vpc_id: str
    subnet_ids: list[str]
    route_table_id: str


def private_network(moto: MotoS3) -> Network:
    """What a user brings: a VPC with two private subnets in two AZs and their route table."""
    ec2 = moto.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.42.{i}.0/24", AvailabilityZone=f"{REGION}{az}")
               ["Subnet"]["SubnetId"] for i, az in ((1, "a"), (2, "b"))]
    table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    for subnet in subnets:
        ec2.associate_route_table(RouteTableId=table, SubnetId=subnet)
    return Network(vpc, subnets, table)


def moto_member_clusters(moto: MotoS3, group: str, count: int, engine_version: str) -> None:
    """moto's CreateReplicationGroup names its member clusters (<group>-001 ...) without
    creating them, and the provider reads the first one back; AWS creates them with the
    group. Only that gap is filled here: the group itself is Terraform's."""
    client = moto.client("elasticache")
    for n in range(1, count + 1):
        client.create_cache_cluster(CacheClusterId=f"{group}-{n:03d}", Engine="redis", EngineVersion=engine_version,
                                    CacheNodeType="cache.t4g.micro", NumCacheNodes=1)


@dataclass
class Applied:
    workdir: Path
    name: str
    bucket: str
    network: Network
    outputs: dict[str, Any]
    apply_seconds: float
    validations: dict[tuple[str, ...], Run]


@pytest.fixture(scope="module")
def applied(moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Applied]:
    """The prod shape of the AWS module, applied to moto: in a VPC, Redis created."""
    require("terraform's hashicorp/aws provider", NO_AWS_PROVIDER)
    name = f"stratus-{uuid.uuid4().hex[:6]}"  # moto is shared with other tests: names of our own
    workdir = copy_module("aws", tmp_path_factory.mktemp("terraform") / "aws")
    (workdir / "moto_override.tf").write_text(moto_override(moto_s3.endpoint))
    network = private_network(moto_s3)
    moto_member_clusters(moto_s3, f"{name}-cache", 2, "7.1")
    bucket = f"{name}-registry"
    (workdir / "terraform.tfvars.json").write_text(json.dumps({
        "name": name, "region": REGION, "bucket_name": bucket,
        "package_path": str(lambda_zip(workdir / "deployment.zip")),
        "subnet_ids": network.subnet_ids, "create_redis": True, "notifications_eventbridge": True,
    }))
    init(workdir, AWS_PLUGINS)
    # the validation plans need no state: they run beside the apply, which spends most
    # of its time polling (the provider waits for S3 lifecycle rules to read back 3 times)
    side = copy_module("aws", workdir.parent / "validations")
    for extra in ("moto_override.tf", "terraform.tfvars.json"):
        shutil.copy(workdir / extra, side / extra)
    init(side, AWS_PLUGINS)
    validations: dict[tuple[str, ...], Run] = {}

    def beside() -> None:
        validations[("validate",)] = terraform(side, "validate", "-json", check=False)
        validations.update({variables: plan_in(side, *variables) for variables in INCONSISTENT})

    thread = threading.Thread(target=beside)
    thread.start()
    try:
        run = terraform(workdir, "apply", "-auto-approve", "-input=false", "-no-color")
    finally:
        thread.join()
    outputs = {k: v["value"] for k, v in json.loads(terraform(workdir, "output", "-json").stdout).items()}
    print(f"\nterraform apply against moto: {run.seconds:.1f} s")
    yield Applied(workdir, name, bucket, network, outputs, run.seconds, validations)


def function(moto: MotoS3, name: str) -> dict[str, Any]:
    return moto.client("lambda").get_function_configuration(FunctionName=name)


@needs_aws_provider
def test_apply_creates_the_functions_with_their_environment(applied: Applied, moto_s3: MotoS3) -> None:
    registry = function(moto_s3, applied.name)
    env = registry["Environment"]["Variables"]
    redis_addr = applied.outputs["redis_addr"]
    assert (registry["Handler"], registry["Runtime"], registry["TracingConfig"]["Mode"]) == ("app.app", "python3.11", "Active")
    assert env["REGISTRY_STORAGE"] == "s3" and env["REGISTRY_STORAGE_S3_BUCKET"] == applied.bucket
    assert env["REGISTRY_STORAGE_S3_REGION"] == REGION and env["REGISTRY_STORAGE_S3_ENCRYPT"] == "true"
    assert env["STRATUS_HTTP_SECRET_PARAMETER"] == f"/{applied.name}/http-secret"
    assert "REGISTRY_HTTP_SECRET" not in env  # the secret is read from SSM, never put in the environment
    assert env["REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR"] == "redis"
    assert env["REGISTRY_REDIS_ADDR"] == redis_addr and redis_addr.endswith(":6379")
    token = moto_s3.client("ssm").get_parameter(Name=f"/{applied.name}/redis-auth-token", WithDecryption=True)
    assert env["REGISTRY_REDIS_TLS"] == "true"
    # the AUTH token is named, not given: the function reads it with its role on first use
    assert env["STRATUS_REDIS_PASSWORD_PARAMETER"] == f"/{applied.name}/redis-auth-token"
    assert token["Parameter"]["Type"] == "SecureString" and len(token["Parameter"]["Value"]) == 64
    assert "REGISTRY_REDIS_PASSWORD" not in env
    assert token["Parameter"]["Value"] not in json.dumps(env)
    assert "REGISTRY_STORAGE_S3_ROOTDIRECTORY" not in env  # empty values are left out
    assert env["REGISTRY_STORAGE_DIRECTUPLOAD_VERIFYTIME"] == "20s"  # within API Gateway's 30 s
    vpc = registry["VpcConfig"]
    assert sorted(vpc["SubnetIds"]) == sorted(applied.network.subnet_ids)
    assert vpc["SecurityGroupIds"] == [applied.outputs["function_security_group_id"]]

    purge = function(moto_s3, f"{applied.name}-purge-uploads")
    assert (purge["Handler"], purge["Timeout"]) == ("app.purge_uploads", 900)
    assert purge["Environment"]["Variables"] == env
    assert purge["VpcConfig"]["SubnetIds"] == vpc["SubnetIds"]
    gc = function(moto_s3, f"{applied.name}-collect-garbage")
    assert (gc["Handler"], gc["Timeout"]) == ("app.collect_garbage", 900)
    assert gc["Environment"]["Variables"] == env
    concurrency = moto_s3.client("lambda").get_function_concurrency(FunctionName=gc["FunctionName"])
    assert concurrency["ReservedConcurrentExecutions"] == 1  # one collector at a time


@needs_aws_provider
def test_apply_generates_the_secret_outside_the_state(applied: Applied, moto_s3: MotoS3) -> None:
    parameter = moto_s3.client("ssm").get_parameter(Name=f"/{applied.name}/http-secret", WithDecryption=True)["Parameter"]
    assert parameter["Type"] == "SecureString"
    assert re.fullmatch(r"[A-Za-z0-9]{48}", parameter["Value"])
    state = (applied.workdir / "terraform.tfstate").read_text()
    assert parameter["Value"] not in state  # written write-only (value_wo)


@needs_aws_provider
def test_apply_grants_exactly_what_the_functions_use(applied: Applied, moto_s3: MotoS3) -> None:
    iam = moto_s3.client("iam")
    doc = iam.get_role_policy(RoleName=f"{applied.name}-function", PolicyName=f"{applied.name}-registry")["PolicyDocument"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    statements = {s["Sid"]: s for s in doc["Statement"]}
    assert set(statements) == {"Logs", "RegistryObjects", "RegistryBucket", "HttpSecret", "RedisAuthToken",
                               "VpcNetworkInterfaces", "Tracing", "Notifications"}
    secret = statements["HttpSecret"]
    assert secret["Action"] == "ssm:GetParameter"
    assert secret["Resource"] == f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/{applied.name}/http-secret"
    token = statements["RedisAuthToken"]
    assert token["Action"] == "ssm:GetParameter"
    assert token["Resource"] == f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/{applied.name}/redis-auth-token"
    assert statements["RegistryBucket"]["Resource"] == f"arn:aws:s3:::{applied.bucket}"
    assert "ec2:CreateNetworkInterface" in statements["VpcNetworkInterfaces"]["Action"]


@needs_aws_provider
def test_apply_creates_the_notifications_bus_and_grants_put_events_on_it(applied: Applied, moto_s3: MotoS3) -> None:
    bus = moto_s3.client("events").describe_event_bus(Name=f"{applied.name}-registry-events")
    assert applied.outputs["eventbridge_bus_arn"] == bus["Arn"]
    doc = moto_s3.client("iam").get_role_policy(RoleName=f"{applied.name}-function",
                                                PolicyName=f"{applied.name}-registry")["PolicyDocument"]
    statements = {s["Sid"]: s for s in (json.loads(doc) if isinstance(doc, str) else doc)["Statement"]}
    assert (statements["Notifications"]["Action"], statements["Notifications"]["Resource"]) == ("events:PutEvents", bus["Arn"])
    env = function(moto_s3, applied.name)["Environment"]["Variables"]
    assert (env["REGISTRY_NOTIFICATIONS_EVENTBRIDGE_BUS"], env["REGISTRY_NOTIFICATIONS_EVENTBRIDGE_REGION"]) == (bus["Name"], REGION)
    endpoints = moto_s3.client("ec2").describe_vpc_endpoints(
        Filters=[{"Name": "vpc-id", "Values": [applied.network.vpc_id]}])["VpcEndpoints"]
    assert f"com.amazonaws.{REGION}.events" in {e["ServiceName"] for e in endpoints}  # PutEvents without a NAT


@needs_aws_provider
def test_apply_builds_the_vpc_side(applied: Applied, moto_s3: MotoS3) -> None:
    ec2 = moto_s3.client("ec2")
    endpoints = ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [applied.network.vpc_id]}])["VpcEndpoints"]
    by_service = {e["ServiceName"].rsplit(".", 1)[1]: e for e in endpoints}
    assert by_service["s3"]["VpcEndpointType"] == "Gateway"
    # every route table of the VPC: the subnets' own, and the main one of any subnet without
    assert applied.network.route_table_id in by_service["s3"]["RouteTableIds"]
    ssm = by_service["ssm"]
    assert ssm["VpcEndpointType"] == "Interface" and ssm["PrivateDnsEnabled"] is True
    assert sorted(ssm["SubnetIds"]) == sorted(applied.network.subnet_ids)

    groups = {g["GroupName"]: g["GroupId"] for g in ec2.describe_security_groups(
        Filters=[{"Name": "vpc-id", "Values": [applied.network.vpc_id]}])["SecurityGroups"]}
    fn, endpoints_sg, redis_sg = (groups[f"{applied.name}-{n}"] for n in ("function", "endpoints", "redis"))
    rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [fn, endpoints_sg, redis_sg]}])
    seen = set()
    for r in rules["SecurityGroupRules"]:
        peer = (r.get("ReferencedGroupInfo") or {}).get("GroupId") or r.get("PrefixListId") or r.get("CidrIpv4")
        seen.add((r["GroupId"], "egress" if r["IsEgress"] else "ingress", r["FromPort"], peer))
    assert {(fn, "egress", 443, endpoints_sg), (fn, "egress", 6379, redis_sg),
            (endpoints_sg, "ingress", 443, fn), (redis_sg, "ingress", 6379, fn)} <= seen
    # and HTTPS to S3's prefix list, which the gateway endpoint routes
    assert any(g == fn and d == "egress" and port == 443 and str(peer).startswith("pl-") for g, d, port, peer in seen)


@needs_aws_provider
def test_apply_creates_redis_with_tls_and_auth(applied: Applied, moto_s3: MotoS3) -> None:
    group = moto_s3.client("elasticache").describe_replication_groups(
        ReplicationGroupId=f"{applied.name}-cache")["ReplicationGroups"][0]
    assert group["TransitEncryptionEnabled"] is True and group["AtRestEncryptionEnabled"] is True
    assert group["AuthTokenEnabled"] is True
    assert group["AutomaticFailover"] == "enabled" and group["MultiAZ"] == "enabled"


@needs_aws_provider
@pytest.mark.parametrize(("rule", "handler", "expression"), [
    ("purge-uploads", "app.purge_uploads", "cron(17 3 * * ? *)"),
    ("collect-garbage", "app.collect_garbage", "rate(15 minutes)"),
])
def test_apply_schedules_the_maintenance(applied: Applied, moto_s3: MotoS3, rule: str, handler: str,
                                         expression: str) -> None:
    events = moto_s3.client("events")
    found = events.describe_rule(Name=f"{applied.name}-{rule}")
    assert found["ScheduleExpression"] == expression and found["State"] == "ENABLED"
    target = function(moto_s3, f"{applied.name}-{rule}")
    assert target["Handler"] == handler
    targets = events.list_targets_by_rule(Rule=found["Name"])["Targets"]
    assert [t["Arn"] for t in targets] == [target["FunctionArn"]]
    policy = json.loads(moto_s3.client("lambda").get_policy(FunctionName=target["FunctionName"])["Policy"])
    (statement,) = policy["Statement"]
    assert statement["Principal"]["Service"] == "events.amazonaws.com"
    assert statement["Condition"]["ArnLike"]["AWS:SourceArn"] == found["Arn"]


@needs_aws_provider
def test_apply_fronts_the_registry_with_an_http_api(applied: Applied, moto_s3: MotoS3) -> None:
    api_id = applied.outputs["registry_url"].split("//", 1)[1].split(".", 1)[0]
    gateway = moto_s3.client("apigatewayv2")
    routes = sorted(r["RouteKey"] for r in gateway.get_routes(ApiId=api_id)["Items"])
    assert routes == ["ANY /v2", "ANY /v2/{proxy+}"]
    (integration,) = gateway.get_integrations(ApiId=api_id)["Items"]
    assert integration["PayloadFormatVersion"] == "2.0" and integration["IntegrationType"] == "AWS_PROXY"
    s3 = moto_s3.client()
    rules = s3.get_bucket_lifecycle_configuration(Bucket=applied.bucket)["Rules"]
    assert [r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] for r in rules] == [7]


# -- plans: a second apply, validations and the other secret store -------------------------------


@needs_aws_provider
@pytest.mark.parametrize(("variables", "messages"), list(INCONSISTENT.items()))
def test_plan_refuses_inconsistent_variables(applied: Applied, variables: tuple[str, ...],
                                             messages: tuple[str, ...]) -> None:
    run = applied.validations[variables]
    assert run.returncode != 0
    said = re.sub(r"\s+", " ", run.stderr)
    for message in messages:
        assert message in said, run.stderr


@needs_aws_provider
def test_a_second_plan_keeps_the_redis_token_and_grants_a_secrets_manager_secret(applied: Applied,
                                                                                 moto_s3: MotoS3) -> None:
    """One plan after the apply, with the secret moved to Secrets Manager (as
    `secretsmanager:<name>`, which the code accepts):

    * the role may now call secretsmanager:GetSecretValue on that secret (any of its
      6-character ARN suffixes), no longer ssm:GetParameter, and the interface
      endpoint is Secrets Manager's;
    * the Redis token stays in SSM, still granted, so SSM gets an endpoint of its own;
    * the Redis token, which a data source draws anew on every plan, stays the first
      apply's: its parameter is unchanged and the group is planned with that token.

    (moto's ElastiCache reads a group back through member clusters without its
    settings, so the group shows drift here; that part of the plan is not asserted.)"""
    setting = "secretsmanager:stratus/http"
    token = moto_s3.client("ssm").get_parameter(Name=f"/{applied.name}/redis-auth-token",
                                                WithDecryption=True)["Parameter"]["Value"]
    planfile = applied.workdir / "again.tfplan"
    run = terraform(applied.workdir, "plan", "-input=false", "-refresh=false", f"-var=http_secret_parameter={setting}",
                    f"-out={planfile}")
    print(f"\nterraform plan after the apply: {run.seconds:.1f} s")
    changes = {r["address"]: r["change"] for r in json.loads(
        terraform(applied.workdir, "show", "-json", str(planfile)).stdout)["resource_changes"]}

    statements = {s["Sid"]: s for s in json.loads(changes["aws_iam_role_policy.function"]["after"]["policy"])["Statement"]}
    assert statements["HttpSecret"]["Action"] == "secretsmanager:GetSecretValue"
    assert statements["HttpSecret"]["Resource"] == f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:stratus/http-??????"
    assert changes["aws_vpc_endpoint.secret[0]"]["after"]["service_name"] == f"com.amazonaws.{REGION}.secretsmanager"
    assert changes["aws_ssm_parameter.http_secret[0]"]["actions"] == ["delete"]  # no longer generated
    assert statements["RedisAuthToken"]["Action"] == "ssm:GetParameter"
    assert changes["aws_vpc_endpoint.redis_token[0]"]["actions"] == ["create"]
    assert changes["aws_vpc_endpoint.redis_token[0]"]["after"]["service_name"] == f"com.amazonaws.{REGION}.ssm"

    assert changes["aws_ssm_parameter.redis_auth_token[0]"]["actions"] == ["no-op"]
    assert changes["aws_elasticache_replication_group.redis[0]"]["after"]["auth_token"] == token
    for address in ('aws_cloudwatch_event_rule.maintenance["purge-uploads"]',
                    'aws_cloudwatch_event_target.maintenance["purge-uploads"]',
                    'aws_cloudwatch_event_rule.maintenance["collect-garbage"]',
                    "aws_vpc_endpoint.s3[0]", "aws_s3_bucket_lifecycle_configuration.registry"):
        assert changes[address]["actions"] == ["no-op"], (address, changes[address])


# -- the function as Terraform configured it -----------------------------------------------------


@needs_aws_provider
def test_the_function_serves_with_exactly_the_environment_terraform_gave_it(
        applied: Applied, moto_s3: MotoS3, tmp_path: Path) -> None:
    """The registry function's environment, read back from moto, runs app.py behind the
    API Gateway stand-in (HTTP API mode, as the module deploys it). Only what Lambda and
    the VPC supply is added: the role's credentials, the AWS endpoints (here moto, there
    the VPC endpoints), and the ElastiCache name resolving to a local redis-server with
    TLS that requires the AUTH token Terraform generated (which the function reads from the
    SSM parameter its environment names). A push and a pull then go through, with the
    descriptor cache filled over TLS + AUTH, then the OCI conformance suite."""
    from tests.lambda_gateway import lambda_gateway
    from tests.oci_conformance import run_oci_conformance
    from tests.redis_server import HAVE_REDIS, NO_REDIS, RedisServer, make_tls_files

    require("redis-server", None if HAVE_REDIS else NO_REDIS)
    env = dict(function(moto_s3, applied.name)["Environment"]["Variables"])
    host, port = env["REGISTRY_REDIS_ADDR"].rsplit(":", 1)
    assert host.endswith(".cache.amazonaws.com") and port == "6379"
    tls = make_tls_files(tmp_path)
    token = moto_s3.client("ssm").get_parameter(Name=env["STRATUS_REDIS_PASSWORD_PARAMETER"],
                                                WithDecryption=True)["Parameter"]["Value"]
    redis = RedisServer(tmp_path, password=token, tls=tls)
    redis.start()
    try:
        supplied = {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL_S3": moto_s3.endpoint, "AWS_ENDPOINT_URL_SSM": moto_s3.endpoint,
            "AWS_ENDPOINT_URL_EVENTBRIDGE": moto_s3.endpoint,  # notifications_eventbridge's PutEvents
            "SSL_CERT_FILE": str(tls.ca),  # the local server's certificate, as ElastiCache's CA is trusted
        }
        with lambda_gateway({**env, "REGISTRY_REDIS_ADDR": redis.addr, **supplied}, mode="http") as gateway:
            client = gateway.client()
            assert client("GET", "/v2/").status == 200
            layer = os.urandom(5 << 20)
            digest = client.push_blob("terraform/app", layer, chunk=[3 << 20, 2 << 20])
            head = client("HEAD", f"/v2/terraform/app/blobs/{digest}")
            assert head.status == 200 and head.header("Content-Length") == str(len(layer))
            blob = client("GET", f"/v2/terraform/app/blobs/{digest}")
            assert blob.status == 307
            import urllib.request

            with urllib.request.urlopen(blob.header("Location"), timeout=60) as response:
                assert response.read() == layer
            # and the whole OCI conformance suite, through the function as Terraform configured it
            suite = tmp_path / "suite"
            suite.mkdir()
            run_oci_conformance(gateway.url, suite, label="[s3] the function terraform applied, behind the API Gateway stand-in")
        assert redis.client().exists(f"blobs::{digest}")  # the cache was reached, over TLS with the token
    finally:
        redis.stop()


# -- offline: the proxy variables as the functions read them ------------------------------------


def console(workdir: Path, expression: str, *variables: str) -> Any:
    """An expression's value as `terraform console` computes it before any apply."""
    done = subprocess.run(["terraform", "console", *variables], input=f"jsonencode({expression})\n",
                          capture_output=True, text=True, cwd=workdir, env=terraform_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(json.loads(done.stdout))


@needs_aws_provider
def test_proxy_variables_become_a_proxy_config_the_registry_loads(tmp_path: Path) -> None:
    """proxy_* variables -> the functions' REGISTRY_PROXY_* environment (empty values
    left out, as main.tf does) -> the proxy section Stratus loads from it. Passwords are
    not in it: a given one becomes an SSM SecureString the functions get the name of,
    and may read (that one, nothing else); one already kept elsewhere is named."""
    from chalicelib.config import load_config

    workdir = copy_module("aws", tmp_path / "aws")
    init(workdir, AWS_PLUGINS)
    upstreams = ('[{prefix="docker.io/",remoteurl="https://registry-1.docker.io",username="hub",password="0123"},'
                 '{prefix="ghcr.io/",remoteurl="https://ghcr.io",ttl="1h"},'
                 '{prefix="quay.io/",remoteurl="https://quay.io",username="q",password_parameter="secretsmanager:quay"}]')
    variables = ("-var=bucket_name=b", "-var=name=reg", "-var=region=eu-west-1", "-var=proxy_inlinelimit=64MiB",
                 "-var=proxy_leasettl=20s", f"-var=proxy_upstreams={upstreams}")
    environment = {k: v for k, v in console(
        workdir, "{for k, v in nonsensitive(local.proxy_environment) : k => try(nonsensitive(v), v)}",
        *variables).items() if v != ""}
    assert environment["REGISTRY_PROXY_UPSTREAMS_1_TTL"] == "1h" and "REGISTRY_PROXY_REMOTEURL" not in environment
    assert "0123" not in json.dumps(environment)  # the password is named, never given
    proxy = load_config(None, environment).proxy
    assert [(u.prefix, u.remoteurl, u.username, u.password, u.passwordparameter, u.ttl) for u in proxy.upstreams] == [
        ("docker.io/", "https://registry-1.docker.io", "hub", None, "/reg/proxy/upstreams/0/password", 300.0),
        ("ghcr.io/", "https://ghcr.io", None, None, None, 3600.0),
        ("quay.io/", "https://quay.io", "q", None, "secretsmanager:quay", 300.0),
    ]
    assert proxy.inlinelimit == 64 << 20 and proxy.leasettl == 20.0
    # the role may read exactly these (data.aws_iam_policy_document.proxy_passwords; the
    # account and partition of their ARNs are known at apply)
    assert console(workdir, "local.proxy_password_grants", *variables) == [
        {"service": "ssm", "arn": "", "path": "parameter/reg/proxy/upstreams/0/password"},
        {"service": "secretsmanager", "arn": "", "path": "secret:quay-??????"},
    ]

    # the reference's single form: the same, for proxy_password
    single = ("-var=bucket_name=b", "-var=name=reg", "-var=proxy_remoteurl=https://registry.example",
              "-var=proxy_username=u", "-var=proxy_password=s3cret")
    environment = {k: v for k, v in console(
        workdir, "{for k, v in nonsensitive(local.proxy_environment) : k => try(nonsensitive(v), v)}",
        *single).items() if v != ""}
    assert environment["REGISTRY_PROXY_PASSWORDPARAMETER"] == "/reg/proxy/password"
    assert "REGISTRY_PROXY_PASSWORD" not in environment and "s3cret" not in json.dumps(environment)
    (upstream,) = load_config(None, environment).proxy.upstreams
    assert (upstream.username, upstream.password, upstream.passwordparameter) == ("u", None, "/reg/proxy/password")


@needs_aws_provider
def test_proxy_passwords_are_planned_as_secure_strings_only_the_role_may_read(
        tmp_path: Path, moto_s3: MotoS3) -> None:
    """Planned against moto (the account and partition known): one SecureString per given
    password, and the role's proxy-passwords policy names those parameters and the one
    kept elsewhere, with the action its service needs, and nothing else."""
    workdir = copy_module("aws", tmp_path / "aws")
    (workdir / "moto_override.tf").write_text(moto_override(moto_s3.endpoint))
    init(workdir, AWS_PLUGINS)
    upstreams = ('[{prefix="docker.io/",remoteurl="https://registry-1.docker.io",username="hub",password="0123"},'
                 '{prefix="ghcr.io/",remoteurl="https://ghcr.io"},'
                 '{prefix="quay.io/",remoteurl="https://quay.io",username="q",password_parameter="secretsmanager:quay"}]')
    variables = [f"-var={v}" for v in ("name=reg", f"region={REGION}", "bucket_name=reg-bucket",
                                       f"package_path={lambda_zip(workdir / 'deployment.zip')}",
                                       f"proxy_upstreams={upstreams}")]
    terraform(workdir, "plan", "-input=false", "-refresh=false", "-no-color", "-out=plan.out", *variables)
    planned = json.loads(terraform(workdir, "show", "-json", "plan.out").stdout)
    resources = {r["address"]: r for r in planned["planned_values"]["root_module"]["resources"]}
    parameter = resources['aws_ssm_parameter.proxy_upstream_password["0"]']["values"]
    assert (parameter["name"], parameter["type"]) == ("/reg/proxy/upstreams/0/password", "SecureString")
    assert not any(a.startswith("aws_ssm_parameter.proxy_upstream_password[") and a.endswith('["1"]')
                   for a in resources)  # no password, no parameter
    assert "aws_ssm_parameter.proxy_password[0]" not in resources
    env = resources["aws_lambda_function.registry"]["values"]["environment"][0]["variables"]
    assert env["REGISTRY_PROXY_UPSTREAMS_0_PASSWORDPARAMETER"] == "/reg/proxy/upstreams/0/password"
    assert "0123" not in json.dumps(env)
    policy = json.loads(resources["aws_iam_role_policy.proxy_passwords[0]"]["values"]["policy"])
    grants = {s["Sid"]: (s["Action"], s["Resource"]) for s in policy["Statement"]}
    assert grants == {
        "ProxyPasswordsSsm": ("ssm:GetParameter", f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/reg/proxy/upstreams/0/password"),
        "ProxyPasswordsSecretsManager": ("secretsmanager:GetSecretValue",
                                         f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:quay-??????"),
    }
