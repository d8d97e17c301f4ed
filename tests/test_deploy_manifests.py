"""The deployment files of infra/deploy, checked as far as a machine without Docker or Kubernetes can.

- every YAML file passes yamllint (duplicate keys, which PyYAML would silently merge, are errors);
- docker-compose.yaml, interpolated the way Compose does with the values of .env.example, validates against
  the Compose Specification's JSON schema (the copy bundled by check-jsonschema); its variables, volumes,
  dependencies, images, healthchecks and credentials are cross-checked; its `ray start` flags and MLflow
  variables are checked against the installed Ray and MLflow;
- the RayJobs validate against kuberay/rayjob.schema.json (our schema of KubeRay's RayJob), whose pod
  templates are Kubernetes PodTemplateSpecs checked by the schemas kubernetes-validate bundles; the Secret
  and the PVC validate against Kubernetes' own schemas;
- each RayJob entrypoint is parsed by the real `p4r` CLI, whose effective configuration is then checked
  against the cluster the manifest asks for (GPUs per actor, mounted paths, the Secret's variables).

Every check is paired with broken copies of the files that it must reject.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner
from referencing import Registry, Resource
from yamllint import linter
from yamllint.config import YamlLintConfig

from persona4rec.cli import main as p4r

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "infra" / "deploy"
KUBERAY = DEPLOY / "kuberay"
COMPOSE = DEPLOY / "docker-compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
RAYJOBS = [KUBERAY / "rayjob.yaml", KUBERAY / "rayjob-reindex.yaml"]
SECRET = KUBERAY / "secret.example.yaml"
PVC = KUBERAY / "artifacts-pvc.yaml"
#: Kubernetes release whose API schemas the manifests are checked against.
K8S_VERSION = "1.33.0"
#: Variable names that hold credentials.
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|(?:^|_)TOKEN(?:_|$)|ACCESS_KEY|API_?KEY|CREDENTIAL", re.IGNORECASE)
#: Where the images put the repository (infra/deploy/Dockerfile: WORKDIR /app, COPY . /app).
IMAGE_REPO = "/app"

YAMLLINT = YamlLintConfig(
    """
extends: default
rules:
  line-length: {max: 120}
  document-start: disable
  truthy: {allowed-values: ["true", "false"]}
"""
)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def pins() -> dict[str, str]:
    """Exact pins of pyproject.toml's dependencies and extras, by distribution name."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    out = {}
    for req in reqs:
        if m := re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==([^;,\s]+)", req.strip()):
            out[m.group(1).lower()] = m.group(2)
    return out


# --------------------------------------------------------------------------------------------- YAML


def yaml_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml")) + [REPO / "conf" / "experiments" / "cluster-gpu.yaml"]


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_is_lint_clean(path: Path):
    problems = list(linter.run(path.read_text(), YAMLLINT, str(path)))
    assert not problems, "\n".join(f"{path.name}:{p.line}:{p.column} {p.desc} ({p.rule})" for p in problems)


def test_yamllint_config_catches_duplicate_keys():
    text = "services:\n  ray-head:\n    image: a:1\n    image: b:2\n"
    assert yaml.safe_load(text)["services"]["ray-head"]["image"] == "b:2"  # what PyYAML makes of it
    assert [p.rule for p in linter.run(text, YAMLLINT)] == ["key-duplicates"]


# ------------------------------------------------------------------------------------------ compose


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for n, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), f".env.example:{n}: not NAME=value: {line!r}"
        assert name not in values, f".env.example:{n}: {name} set twice"
        values[name] = value
    return values


_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_]\w*))"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR:+alt}, $VAR, $$.

    A variable that is neither set nor given a default raises KeyError (Compose would warn and put in '').
    """
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["bare"]
        op, arg, have = m["op"] or "", m["arg"] or "", env.get(m["braced"] or m["bare"])
        if op in (":-", "-"):
            return have if have or (op == "-" and have is not None) else arg
        if op == ":+":
            return arg if have else ""
        if have is None or (op == ":?" and not have):
            raise KeyError(f"{name} is not set ({arg})" if arg else name)
        return have

    return _VAR.sub(one, value)


def variables_in(text: str) -> set[str]:
    return {m["braced"] or m["bare"] for m in _VAR.finditer(text) if not m["escaped"]}


@cache
def compose() -> dict[str, Any]:
    """The compose file as Compose sees it: merge keys resolved, variables from .env.example."""
    return interpolate(load(COMPOSE), env_example())


@cache
def compose_validator() -> jsonschema.Draft202012Validator:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendor / "compose-spec.json").read_text())
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def all_errors(validator: jsonschema.protocols.Validator, doc: Any) -> list[str]:
    """'path: message' of every error, the branches of anyOf/oneOf included."""

    def walk(errors: Any) -> Iterator[str]:
        for e in errors:
            yield f"{e.json_path}: {e.message}"
            yield from walk(e.context)

    return list(walk(validator.iter_errors(doc)))


def test_compose_file_matches_the_compose_specification():
    errors = all_errors(compose_validator(), compose())
    assert not errors, "\n".join(errors)


def _set_healthcheck_typo(doc: dict) -> None:
    doc["services"]["milvus"]["healthchek"] = doc["services"]["milvus"].pop("healthcheck")


def _set_bad_condition(doc: dict) -> None:
    doc["services"]["mlflow"]["depends_on"]["postgres"]["condition"] = "service_ready"


def _set_ports_mapping(doc: dict) -> None:
    doc["services"]["ray-head"]["ports"] = {"8265": 8265}


def _set_service_name(doc: dict) -> None:
    doc["services"]["ray head"] = doc["services"].pop("ray-head")


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (_set_healthcheck_typo, "healthchek"),
        (_set_bad_condition, "$.services.mlflow.depends_on"),
        (_set_ports_mapping, "$.services['ray-head'].ports"),
        (_set_service_name, "ray head"),
    ],
    ids=["unknown-service-key", "bad-depends-on-condition", "ports-not-a-list", "bad-service-name"],
)
def test_compose_schema_rejects_broken_files(mutate: Callable[[dict], None], where: str):
    doc = copy.deepcopy(compose())
    mutate(doc)
    errors = all_errors(compose_validator(), doc)
    assert any(where in e for e in errors), f"expected an error at {where}, got {errors}"


def test_compose_variables_are_all_in_env_example_and_all_used():
    raw = COMPOSE.read_text()
    used, defined = variables_in(raw), set(env_example())
    assert used - defined == set(), "used in docker-compose.yaml, missing from .env.example"
    assert defined - used == set(), "defined in .env.example, used nowhere"


def test_interpolation_refuses_an_unset_variable():
    with pytest.raises(KeyError, match="MINIO_ROOT_PASSWORD is not set"):
        interpolate({"a": "${MINIO_ROOT_PASSWORD:?set it}"}, {})
    assert interpolate(["$${X}", "${X:-d}", "${X-d}", "${Y:-d}"], {"X": ""}) == ["${X}", "d", "", "d"]


def test_env_example_holds_placeholders_not_credentials():
    env = env_example()
    secrets = {name: value for name, value in env.items() if SECRET_NAME.search(name)}
    assert secrets, "the compose stack has credentials; .env.example must list them"
    assert all("change-me" in value for value in secrets.values()), secrets


def pinned(image: str) -> bool:
    """name:tag with a tag other than latest, or name@digest."""
    name, _, digest = image.partition("@")
    tag = name.rsplit("/", 1)[-1].partition(":")[2]
    return bool(digest) or (bool(tag) and tag != "latest")


def compose_problems(raw: dict[str, Any], env: dict[str, str]) -> list[str]:
    """What is wrong in a compose file (as loaded, before interpolation) beyond its schema."""
    doc, problems = interpolate(raw, env), []
    secret_values = {v for k, v in env.items() if SECRET_NAME.search(k)}
    services = doc["services"]
    declared, mounted = set(doc.get("volumes") or {}), set()
    for name, service in services.items():
        image = service.get("image", "")
        if not pinned(image):
            problems.append(f"{name}: image {image!r} is not pinned (a built service needs its tag too)")
        raw_env = raw["services"][name].get("environment") or {}
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key) and "${" not in str(raw_env[key]):
                problems.append(f"{name}: {key} is written in the file")
            if re.search(r"://[^/@\s]+:[^/@\s]+@", str(value)):
                problems.append(f"{name}: {key} has user:password@")
        # A command line is visible to every process of the host: no credential may be interpolated into one.
        for part in ("command", "entrypoint", "healthcheck"):
            if any(v in json.dumps(service.get(part, "")) for v in secret_values):
                problems.append(f"{name}: {part} contains a credential from .env")
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if not source.startswith((".", "/", "~")):
                mounted.add(source)
                if source not in declared:
                    problems.append(f"{name}: volume {source} is not declared")
        if service.get("restart") != "no" and "healthcheck" not in service:
            problems.append(f"{name}: a long-running service needs a healthcheck")
        for dep, cond in (service.get("depends_on") or {}).items():
            if dep not in services:
                problems.append(f"{name} depends on unknown {dep}")
            elif cond["condition"] == "service_healthy" and "healthcheck" not in services[dep]:
                problems.append(f"{name} waits for {dep} to be healthy: it has no healthcheck")
            elif cond["condition"] == "service_completed_successfully" and services[dep].get("restart") != "no":
                problems.append(f"{name} waits for {dep} to exit: it restarts")
    if declared - mounted:
        problems.append(f"volumes declared, never mounted: {sorted(declared - mounted)}")
    return problems


def test_compose_cross_checks_pass():
    assert compose_problems(load(COMPOSE), env_example()) == []


def _services(doc: dict) -> dict:
    return doc["services"]


BROKEN_COMPOSE: dict[str, tuple[Callable[[dict], Any], str]] = {
    "latest-image": (lambda d: _services(d)["etcd"].update(image="quay.io/coreos/etcd:latest"), "etcd: image"),
    "untagged-image": (lambda d: _services(d)["postgres"].update(image="postgres"), "postgres: image"),
    "literal-password": (
        lambda d: _services(d)["postgres"]["environment"].update(POSTGRES_PASSWORD="hunter2"),
        "POSTGRES_PASSWORD is written in the file",
    ),
    "password-in-uri": (
        lambda d: _services(d)["mlflow"]["environment"].update(
            MLFLOW_BACKEND_STORE_URI="postgresql://${POSTGRES_USER}:${POSTGRES_PASSWORD}@postgres/mlflow"
        ),
        "user:password@",
    ),
    "password-in-command": (
        lambda d: _services(d)["minio-init"].update(
            entrypoint=["mc", "alias", "set", "p", "u", "${MINIO_ROOT_PASSWORD}"]
        ),
        "minio-init: entrypoint contains a credential",
    ),
    "undeclared-volume": (lambda d: d["volumes"].pop("etcd-data"), "volume etcd-data is not declared"),
    "unused-volume": (lambda d: d["volumes"].update({"spare": None}), "never mounted: ['spare']"),
    "no-healthcheck": (lambda d: _services(d)["postgres"].pop("healthcheck"), "postgres: a long-running service"),
    "wait-for-a-restarting-service": (
        lambda d: _services(d)["minio-init"].update(restart="always"),
        "mlflow waits for minio-init to exit",
    ),
    "unknown-dependency": (
        lambda d: _services(d)["mlflow"]["depends_on"].update(postgress={"condition": "service_started"}),
        "unknown postgress",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_COMPOSE))
def test_compose_cross_checks_catch_mistakes(case: str):
    mutate, expected = BROKEN_COMPOSE[case]
    raw = copy.deepcopy(load(COMPOSE))
    mutate(raw)
    problems = compose_problems(raw, env_example())
    assert any(expected in p for p in problems), f"expected {expected!r}, got {problems}"


@cache
def click_option_names(module_file: Path, function: str) -> frozenset[str]:
    """The --options of a click command, read from its source (importing Ray or MLflow takes seconds)."""
    tree = ast.parse(module_file.read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            names = {
                flag
                for dec in node.decorator_list
                if isinstance(dec, ast.Call)
                for arg in dec.args
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                for flag in arg.value.split("/")
                if flag.startswith("--")
            }
            assert names, f"no click options found on {function} in {module_file}"
            return frozenset(names)
    raise AssertionError(f"{function} not found in {module_file}")


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # finds the package without importing it
    assert spec is not None and spec.origin, f"{name} is not installed"
    return Path(spec.origin).parent


def ray_start_options() -> frozenset[str]:
    return click_option_names(package_dir("ray") / "scripts" / "scripts.py", "start")


def flags(command: list[str]) -> dict[str, str]:
    """--name=value / --name of a command line."""
    return dict(part[2:].partition("=")[::2] for part in command if part.startswith("--"))


def test_compose_ray_cluster_is_wired_to_its_head():
    services = compose()["services"]
    head, worker = services["ray-head"], services["ray-worker"]
    assert head["command"][:2] == worker["command"][:2] == ["ray", "start"]
    known = ray_start_options()
    for service in (head, worker):
        unknown = {f"--{name}" for name in flags(service["command"])} - known
        assert not unknown, f"not options of `ray start`: {unknown}"
    head_flags, worker_flags = flags(head["command"]), flags(worker["command"])
    assert "head" in head_flags and "head" not in worker_flags
    assert head_flags["dashboard-host"] == "0.0.0.0"
    assert worker_flags["address"] == f"{head['hostname']}:{head_flags['port']}"
    published = {p.rsplit(":", 1)[-1] for p in head["ports"]}
    assert {head_flags["dashboard-port"], head_flags["ray-client-server-port"]} <= published
    assert int(worker["deploy"]["replicas"]) >= 1
    assert head["image"] == worker["image"] and head["volumes"] == worker["volumes"]


def test_ray_image_runs_the_ray_the_project_pins():
    ray = pins()["ray"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^ARG RAY_IMAGE=rayproject/ray:(\S+)$", dockerfile, re.M)
    assert base and base.group(1).split("-")[0] == ray, "Dockerfile's Ray differs from pyproject's ray pin"
    assert f"ray{ray}" in compose()["services"]["ray-head"]["image"]
    assert re.search(rf"^WORKDIR {IMAGE_REPO}$", dockerfile, re.M)
    assert re.search(rf"^COPY .* \. {IMAGE_REPO}$", dockerfile, re.M)


def mlflow_variables() -> set[str]:
    """Variables MLflow reads: `mlflow server`'s options (envvar=...) and mlflow.environment_variables."""
    base = package_dir("mlflow")
    shared = {}
    for node in ast.parse((base / "utils" / "cli_args.py").read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            for kw in node.value.keywords:
                if kw.arg == "envvar" and isinstance(kw.value, ast.Constant):
                    shared[node.targets[0].id] = kw.value.value  # type: ignore[attr-defined]
    names = set()
    for node in ast.parse((base / "cli" / "__init__.py").read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name == "server":
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call):
                    names |= {
                        kw.value.value
                        for kw in dec.keywords
                        if kw.arg == "envvar" and isinstance(kw.value, ast.Constant)
                    }
                elif isinstance(dec, ast.Attribute) and dec.attr in shared:
                    names.add(shared[dec.attr])
    for node in ast.walk(ast.parse((base / "environment_variables.py").read_text())):
        first = node.args[0] if isinstance(node, ast.Call) and node.args else None
        if isinstance(first, ast.Constant) and str(first.value).startswith("MLFLOW_"):
            names.add(first.value)
    assert {"MLFLOW_BACKEND_STORE_URI", "MLFLOW_S3_ENDPOINT_URL"} <= names, "MLflow's sources were not understood"
    return names


def test_compose_mlflow_server_settings_are_ones_mlflow_reads():
    service = compose()["services"]["mlflow"]
    env = service["environment"]
    unknown = {k for k in env if k.startswith("MLFLOW_")} - mlflow_variables()
    assert not unknown, f"MLflow reads no such variable: {unknown}"
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")
    assert service["image"].endswith(":" + pins()["mlflow"])
    dockerfile = (DEPLOY / "mlflow.Dockerfile").read_text()
    assert f"mlflow=={pins()['mlflow']}" in dockerfile, "the server's MLflow differs from the client's pin"
    assert all(
        re.fullmatch(r"[\w.-]+==[\w.]+", r)
        for r in re.findall(r"pip install --no-cache-dir (.*)", dockerfile)[0].split()
    )


# ------------------------------------------------------------------------------------------ kuberay


def k8s_schemas() -> Traversable:
    return resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"


@cache
def rayjob_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((KUBERAY / "rayjob.schema.json").read_text())
    k8s = [json.loads((k8s_schemas() / name).read_text()) for name in ("_definitions.json", "podtemplatespec-v1.json")]
    registry = Registry().with_resources((doc["$id"], Resource.from_contents(doc)) for doc in k8s)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


@pytest.mark.parametrize("path", RAYJOBS, ids=lambda p: p.name)
def test_rayjob_matches_the_rayjob_schema(path: Path):
    errors = all_errors(rayjob_validator(), load(path))
    assert not errors, "\n".join(errors)


def _worker(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]


def _container(doc: dict) -> dict:
    return _worker(doc)["template"]["spec"]["containers"][0]


BROKEN_RAYJOBS: dict[str, tuple[Callable[[dict], Any], str]] = {
    "misspelt-spec-field": (lambda d: d["spec"].update(shutdownAfterJobFinish=True), "shutdownAfterJobFinish"),
    "no-entrypoint": (lambda d: d["spec"].pop("entrypoint"), "'entrypoint' is a required property"),
    "unquoted-ray-start-param": (
        lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
        "$.spec.rayClusterSpec.headGroupSpec.rayStartParams['num-cpus']",
    ),
    "worker-without-group-name": (lambda d: _worker(d).pop("groupName"), "'groupName' is a required property"),
    "ttl-without-shutdown": (lambda d: d["spec"].pop("shutdownAfterJobFinishes"), "shutdownAfterJobFinishes"),
    "old-api-version": (lambda d: d.update(apiVersion="ray.io/v1alpha1"), "$.apiVersion"),
    "container-field-typo": (lambda d: _container(d).update(envfrom=[]), "envfrom"),
    "secret-ref-without-key": (
        lambda d: _container(d)["env"][0]["valueFrom"]["secretKeyRef"].pop("key"),
        "'key' is a required property",
    ),
    "no-name": (lambda d: d["metadata"].pop("name"), "$.metadata"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_RAYJOBS))
def test_rayjob_schema_rejects_broken_manifests(case: str):
    mutate, expected = BROKEN_RAYJOBS[case]
    doc = load(RAYJOBS[0])
    mutate(doc)
    errors = all_errors(rayjob_validator(), doc)
    assert any(expected in e for e in errors), f"expected {expected!r}, got {errors}"


def entrypoint_commands(entrypoint: str) -> list[list[str]]:
    """The `&&`-joined commands of an entrypoint, split as a shell would (nothing fancier is allowed)."""
    lexer = shlex.shlex(entrypoint, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token == "&&":
            commands.append([])
        else:
            assert not set(token) <= set(lexer.punctuation_chars), f"only `&&` chains of commands: {entrypoint!r}"
            commands[-1].append(token)
    assert all(commands), f"an empty command in {entrypoint!r}"
    return commands


def effective_config(argv: list[str]) -> dict[str, Any]:
    """Run `p4r <stage> ... --print-config` through the real CLI: it parses, layers and validates."""
    return copy.deepcopy(_effective_config(tuple(argv)))


@cache
def _effective_config(argv: tuple[str, ...]) -> dict[str, Any]:
    assert argv[0] == "p4r", f"not a p4r command: {argv}"
    assert argv[1] in p4r.commands, f"p4r has no command {argv[1]!r}"
    args = [a.replace(IMAGE_REPO + "/", str(REPO) + "/", 1) if a.startswith(IMAGE_REPO + "/") else a for a in argv[1:]]
    result = CliRunner().invoke(p4r, [*args, "--print-config"])
    assert result.exit_code == 0, f"{shlex.join(argv)}: {result.output}"
    return yaml.safe_load(result.stdout)


@pytest.mark.parametrize("path", RAYJOBS, ids=lambda p: p.name)
def test_rayjob_entrypoint_is_a_valid_p4r_command(path: Path):
    commands = entrypoint_commands(load(path)["spec"]["entrypoint"])
    stages = [argv[1] for argv in commands]
    assert stages == (["run"] if path.name == "rayjob.yaml" else ["prepare", "reason", "embed", "index"])
    for argv in commands:
        effective_config(argv)


def test_entrypoint_check_rejects_a_wrong_command():
    with pytest.raises(AssertionError, match="p4r has no command 'reindex'"):
        effective_config(["p4r", "reindex"])
    with pytest.raises(AssertionError, match="unknown key"):
        effective_config(["p4r", "reason", "reason.actors.gpus=1"])
    with pytest.raises(AssertionError, match="only `&&` chains"):
        entrypoint_commands("p4r reason; p4r index")
    with pytest.raises(AssertionError, match="only `&&` chains"):
        entrypoint_commands("p4r reason || p4r index")
    assert entrypoint_commands("p4r reason -q&&p4r index x='a b'") == [
        ["p4r", "reason", "-q"],
        ["p4r", "index", "x=a b"],
    ]


def pod_specs(doc: dict) -> dict[str, dict]:
    cluster = doc["spec"]["rayClusterSpec"]
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    pods |= {g["groupName"]: g["template"]["spec"] for g in cluster.get("workerGroupSpecs", [])}
    return pods


def gpus(container: dict) -> float:
    return float((container.get("resources", {}).get("limits") or {}).get("nvidia.com/gpu", 0))


def rayjob_problems(doc: dict[str, Any]) -> list[str]:
    """What is wrong in a RayJob beyond its schema: its cluster against its entrypoints' configuration,
    its images against the pinned Ray, its credentials against the Secret."""
    problems: list[str] = []
    spec, cluster = doc["spec"], doc["spec"]["rayClusterSpec"]
    secret, claim = load(SECRET), load(PVC)["metadata"]["name"]
    if not (spec.get("shutdownAfterJobFinishes") and spec.get("ttlSecondsAfterFinished", 0) > 0):
        problems.append("the cluster must be deleted some time after the job (shutdownAfterJobFinishes, ttl)")
    if cluster.get("rayVersion") != pins()["ray"]:
        problems.append(f"rayVersion {cluster.get('rayVersion')} is not pyproject's ray {pins()['ray']}")
    groups, pods = cluster.get("workerGroupSpecs", []), pod_specs(doc)
    for params in [cluster["headGroupSpec"]["rayStartParams"]] + [g["rayStartParams"] for g in groups]:
        if unknown := {f"--{k}" for k in params} - ray_start_options():
            problems.append(f"rayStartParams not options of `ray start`: {sorted(unknown)}")
    for g in groups:
        if not g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]:
            problems.append(f"{g['groupName']}: replicas outside [minReplicas, maxReplicas]")
    total_gpus = sum(g["replicas"] * gpus(c) for g in groups for c in g["template"]["spec"]["containers"])

    for argv in entrypoint_commands(spec["entrypoint"]):
        cfg = effective_config(argv)
        stage = argv[1]
        if not cfg["ray"]["address"]:
            problems.append(f"{stage}: ray.address is null: the driver would start its own Ray, not join the cluster")
        llm, actors, embed = cfg["llm"], cfg["reason"]["actors"], cfg["embed"]
        if actors["num_gpus"] != llm["vllm"]["tensor_parallel_size"]:
            problems.append(f"{stage}: reason.actors.num_gpus differs from llm.vllm.tensor_parallel_size")
        if actors["num_actors"] * actors["num_gpus"] > total_gpus:
            problems.append(f"{stage}: more LLM GPUs asked for than the cluster's {total_gpus:g}")
        if embed["num_actors"] * embed["num_gpus"] > total_gpus:
            problems.append(f"{stage}: more embedding GPUs asked for than the cluster's {total_gpus:g}")
        shared = {"paths.artifacts": cfg["paths"]["artifacts"], "data.cache_dir": cfg["data"]["cache_dir"]}
        for name, pod in pods.items():
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for container in pod["containers"]:
                mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                for key, path in shared.items():
                    under = [m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")]
                    pvc = under and volumes.get(mounts[under[0]], {}).get("persistentVolumeClaim", {})
                    if not pvc or pvc.get("claimName") != claim:
                        problems.append(f"{name}: {key}={path} is not on the shared volume {claim}")
                env = {e["name"]: e for e in container.get("env", [])}
                token_env = cfg["index"]["token_env"]
                if "secretKeyRef" not in env.get(token_env, {}).get("valueFrom", {}):
                    problems.append(f"{name}: index.token_env={token_env} is not set from the Secret")

    for name, pod in pods.items():
        for container in pod["containers"]:
            image = container["image"]
            if not pinned(image) or f"ray{pins()['ray']}" not in image:
                problems.append(f"{name}: image {image} is not pinned to a build for Ray {pins()['ray']}")
            if container.get("envFrom"):
                problems.append(f"{name}: envFrom imports a whole Secret; take each variable by secretKeyRef")
            for var in container.get("env", []):
                if not SECRET_NAME.search(var["name"]):
                    continue
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if "value" in var or not ref:
                    problems.append(f"{name}: {var['name']} is not taken from a Secret")
                elif ref["name"] != secret["metadata"]["name"]:
                    problems.append(f"{name}: {var['name']} names Secret {ref['name']}")
                elif not ref.get("optional") and ref["key"] not in secret["stringData"]:
                    problems.append(f"{name}: {var['name']}: the Secret has no key {ref['key']}")
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}")
    if extra := set(runtime_env) - {"env_vars", "pip", "py_modules", "working_dir", "excludes", "config"}:
        problems.append(f"runtimeEnvYAML: unknown fields {sorted(extra)}")
    if leaked := [k for k in runtime_env.get("env_vars", {}) if SECRET_NAME.search(k)]:
        problems.append(f"runtimeEnvYAML: {leaked} in env_vars, which the dashboard shows")
    return problems


@pytest.mark.parametrize("path", RAYJOBS, ids=lambda p: p.name)
def test_rayjob_cluster_fits_its_configuration_and_secrets(path: Path):
    assert rayjob_problems(load(path)) == []


def _head(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


BROKEN_CLUSTERS: dict[str, tuple[Callable[[dict], Any], str]] = {
    "too-few-gpus": (lambda d: _worker(d).update(replicas=2, minReplicas=2, maxReplicas=2), "more LLM GPUs"),
    "replicas-out-of-bounds": (lambda d: _worker(d).update(maxReplicas=2), "replicas outside"),
    "ray-version-drift": (lambda d: d["spec"]["rayClusterSpec"].update(rayVersion="2.59.0"), "rayVersion 2.59.0"),
    "latest-image": (lambda d: _container(d).update(image="rayproject/ray:latest"), "gpu-llm: image"),
    "unknown-ray-start-option": (lambda d: _worker(d)["rayStartParams"].update({"num-gpu": "1"}), "--num-gpu"),
    "no-cleanup": (lambda d: d["spec"].update(shutdownAfterJobFinishes=False), "deleted some time after"),
    "literal-token": (
        lambda d: _head(d).update(env=[{"name": "MILVUS_TOKEN", "value": "root:hunter2"}]),
        "head: MILVUS_TOKEN is not taken from a Secret",
    ),
    "unknown-secret-key": (
        lambda d: _head(d).update(
            env=[
                {"name": "MILVUS_TOKEN", "valueFrom": {"secretKeyRef": {"name": "persona4rec-credentials", "key": "x"}}}
            ]
        ),
        "the Secret has no key x",
    ),
    "whole-secret": (
        lambda d: _head(d).update(envFrom=[{"secretRef": {"name": "persona4rec-credentials"}}]),
        "envFrom imports a whole Secret",
    ),
    "artifacts-not-shared": (
        lambda d: _container(d).update(volumeMounts=[{"name": "dshm", "mountPath": "/dev/shm"}]),
        "gpu-llm: paths.artifacts=/data/artifacts is not on the shared volume",
    ),
    "token-in-runtime-env": (
        lambda d: d["spec"].update(runtimeEnvYAML="env_vars:\n  MILVUS_TOKEN: root:x\n"),
        "which the dashboard shows",
    ),
    "driver-starts-its-own-ray": (
        lambda d: d["spec"].update(entrypoint=d["spec"]["entrypoint"] + " ray.address=null"),
        "ray.address is null",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_CLUSTERS))
def test_rayjob_cross_checks_catch_mistakes(case: str):
    mutate, expected = BROKEN_CLUSTERS[case]
    doc = copy.deepcopy(load(RAYJOBS[0]))
    mutate(doc)
    problems = rayjob_problems(doc)
    assert any(expected in p for p in problems), f"expected {expected!r}, got {problems}"


@pytest.mark.parametrize("path", [SECRET, PVC], ids=lambda p: p.name)
def test_kubernetes_manifests_match_kubernetes_schemas(path: Path):
    assert kubernetes_validate.validate(load(path), K8S_VERSION, strict=True)


def test_secret_example_holds_placeholders_only():
    values = load(SECRET)["stringData"].values()
    assert all("change-me" in v for v in values), "secret.example.yaml is an example: no real credentials"


@pytest.mark.parametrize(
    ("path", "mutate"),
    [
        (PVC, lambda d: d["spec"].update(accessModes="ReadWriteMany")),
        (PVC, lambda d: d["spec"].update(storageClass="nfs")),
        (SECRET, lambda d: d.update(stringdata=d.pop("stringData"))),
        (SECRET, lambda d: d["stringData"].update({"milvus-token": 1})),
    ],
    ids=["pvc-access-modes-not-a-list", "pvc-unknown-field", "secret-field-typo", "secret-value-not-text"],
)
def test_kubernetes_schemas_reject_broken_manifests(path: Path, mutate: Callable[[dict], None]):
    doc = load(path)
    mutate(doc)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_manifests_start_ray_the_way_the_cluster_tests_do():
    """tests/clusters.py runs `reason` and `embed` on a Ray head with no CPUs and worker nodes that join it by
    address (issue #28): the Compose file and both RayJobs start their clusters with the same settings."""
    from tests.clusters import RAY_HEAD_FLAGS, RAY_WORKER_FLAGS

    services = compose()["services"]
    head, worker = flags(services["ray-head"]["command"]), flags(services["ray-worker"]["command"])
    for flag in RAY_HEAD_FLAGS:
        name, _, value = flag[2:].partition("=")
        assert name in head and head[name] == value, f"ray-head lacks {flag}"
    assert all(flag[2:] in worker for flag in RAY_WORKER_FLAGS)
    for path in RAYJOBS:  # KubeRay adds --head and the workers' --address itself
        params = load(path)["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
        for flag in RAY_HEAD_FLAGS[1:]:
            name, _, value = flag[2:].partition("=")
            assert params.get(name) == value, f"{path.name}: the head's rayStartParams lack {flag}"
