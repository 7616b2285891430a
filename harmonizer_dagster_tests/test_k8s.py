"""deploy/k8s/values.yaml, proven as far as a machine without a cluster allows.

Without the chart (CI): the instance the chart renders from the values is compared with
dagster.yaml setting by setting, so the two cannot drift; dagster-k8s's own K8sRunLauncher,
loaded from that instance, builds the Job of a run of every code location, which is validated
strictly against the Kubernetes 1.30 schemas that kubernetes-validate ships.

With Dagster's unpacked chart of the pinned version in HARMONIZER_DAGSTER_CHART (and helm):
the values are validated against the chart's schema offline, helm lints and renders them, and
the manifests are validated and checked; skipped otherwise, saying why.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import shutil
import subprocess
import tomllib
import uuid
from collections.abc import Iterator, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

import dagster as dg
import jsonschema
import kubernetes
import kubernetes_validate
import pytest
import referencing
import referencing.exceptions
import sqlalchemy
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.launcher import LaunchRunContext
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.storage.dagster_run import DagsterRun
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
from dagster_k8s import K8sRunLauncher
from dagster_postgres.utils import pg_url_from_config
from referencing.jsonschema import DRAFT7

from harmonizer_dagster.definitions import build_definitions

ROOT = Path(__file__).parent.parent
VALUES = ROOT / "deploy" / "k8s" / "values.yaml"
INSTANCE = ROOT / "dagster.yaml"
FLEET_DOC = ROOT / "docs" / "fleet.md"
PYPROJECT = ROOT / "pyproject.toml"
KUBERNETES_VERSION = "1.30"
# docs/fleet.md installs the release `dagster` into the namespace `dagster`.
RELEASE = "dagster"
NAMESPACE = "dagster"
CHART_ENV = "HARMONIZER_DAGSTER_CHART"

# The chart's defaults (helm/dagster/values.yaml) for the keys the helpers below read; Helm
# merges the user's values over them, maps key by key, lists whole.
CHART_DEFAULTS: dict[str, Any] = {
    "global": {"dagsterHome": "/opt/dagster/dagster_home", "postgresqlSecretName": "", "serviceAccountName": ""},
    "serviceAccount": {"name": ""},
    "imagePullSecrets": [],
    "postgresql": {
        "enabled": True,
        "postgresqlHost": "",
        "postgresqlUsername": "test",
        "postgresqlDatabase": "test",
        "postgresqlParams": {},
        "postgresqlScheme": "",
        "service": {"port": 5432},
    },
    "scheduler": {"type": "DagsterDaemonScheduler"},
    "runLauncher": {
        "type": "K8sRunLauncher",
        "config": {
            "k8sRunLauncher": {
                "imagePullPolicy": "Always",
                "loadInclusterConfig": True,
                "jobNamespace": None,
                "envConfigMaps": [],
                "envSecrets": [],
                "envVars": [],
                "volumeMounts": [],
                "volumes": [],
                "labels": {},
                "resources": {},
            }
        },
    },
    "dagsterDaemon": {
        "enabled": True,
        "runCoordinator": {"enabled": True, "type": "QueuedRunCoordinator", "config": {}},
        "runMonitoring": {"enabled": True, "startTimeoutSeconds": 300, "pollIntervalSeconds": 120},
        "runRetries": {"enabled": True, "maxRetries": 0},
    },
    "computeLogManager": {"type": "NoOpComputeLogManager", "config": {}},
    "telemetry": {"enabled": True},
    "additionalInstanceConfig": None,
}


def helm_merge(base: Any, override: Any) -> Any:
    """Values over defaults as Helm merges them: maps key by key, anything else replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {k: helm_merge(base.get(k), override[k]) if k in override else base[k] for k in base | override}
    return override


def merged_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The chart's defaults with the user's values over them."""
    return copy.deepcopy(helm_merge(CHART_DEFAULTS, dict(values)))


def _fullname(chart_name: str) -> str:
    """Template `dagster.fullname`: the release name, prefixed unless it holds the chart's name."""
    return RELEASE if chart_name in RELEASE else f"{RELEASE}-{chart_name}"[:63]


def chart_instance(values: Mapping[str, Any]) -> dict[str, Any]:
    """The dagster.yaml the chart renders into its instance ConfigMap (templates
    configmap-instance.yaml and helpers/instance/*.tpl); sections it cannot render raise."""
    v = merged_values(values)
    pg = v["postgresql"]
    postgres_db: dict[str, Any] = {
        "username": pg["postgresqlUsername"],
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": f"{_fullname('dagster')}-postgresql" if pg["enabled"] else pg["postgresqlHost"],
        "db_name": pg["postgresqlDatabase"],
        "port": pg["service"]["port"],
        "params": pg["postgresqlParams"],
    }
    if pg["postgresqlScheme"]:
        postgres_db["scheme"] = pg["postgresqlScheme"]
    storage = {"config": {"postgres_db": postgres_db}}
    assert v["scheduler"]["type"] == "DagsterDaemonScheduler", "the helper renders only the daemon scheduler"
    instance: dict[str, Any] = {
        "scheduler": {"module": "dagster._core.scheduler", "class": "DagsterDaemonScheduler"},
        "schedule_storage": {"module": "dagster_postgres.schedule_storage", "class": "PostgresScheduleStorage"}
        | storage,
        "run_storage": {"module": "dagster_postgres.run_storage", "class": "PostgresRunStorage"} | storage,
        "event_log_storage": {"module": "dagster_postgres.event_log", "class": "PostgresEventLogStorage"} | storage,
        "run_launcher": chart_run_launcher(v),
    }
    daemon = v["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]
    if daemon["enabled"] and coordinator["enabled"]:
        assert coordinator["type"] == "CustomRunCoordinator", "the helper renders only a custom coordinator"
        custom = coordinator["config"]["customRunCoordinator"]
        instance["run_coordinator"] = {"module": custom["module"], "class": custom["class"], "config": custom["config"]}
    logs = v["computeLogManager"]
    if logs["type"] == "NoOpComputeLogManager":
        instance["compute_logs"] = {
            "module": "dagster._core.storage.noop_compute_log_manager",
            "class": "NoOpComputeLogManager",
        }
    else:
        assert logs["type"] == "CustomComputeLogManager", "the helper renders no-op and custom managers only"
        custom = logs["config"]["customComputeLogManager"]
        instance["compute_logs"] = {"module": custom["module"], "class": custom["class"], "config": custom["config"]}
    monitoring = daemon["runMonitoring"]
    if daemon["enabled"] and monitoring["enabled"]:
        # The chart writes these keys only: it has no max_runtime_seconds.
        instance["run_monitoring"] = {
            "enabled": True,
            "start_timeout_seconds": monitoring["startTimeoutSeconds"],
            "poll_interval_seconds": monitoring["pollIntervalSeconds"],
        }
        for key, name in (
            ("cancelTimeoutSeconds", "cancel_timeout_seconds"),
            ("maxResumeRunAttempts", "max_resume_run_attempts"),
            ("freeSlotsAfterRunEndSeconds", "free_slots_after_run_end_seconds"),
        ):
            if monitoring.get(key) is not None:
                instance["run_monitoring"][name] = monitoring[key]
    retries = daemon["runRetries"]
    if daemon["enabled"] and retries["enabled"]:
        instance["run_retries"] = {"enabled": True}
        if retries.get("maxRetries"):
            instance["run_retries"]["max_retries"] = retries["maxRetries"]
        if retries.get("retryOnAssetOrOpFailure") is not None:
            instance["run_retries"]["retry_on_asset_or_op_failure"] = retries["retryOnAssetOrOpFailure"]
    instance["telemetry"] = {"enabled": v["telemetry"]["enabled"]}
    for key, section in (v["additionalInstanceConfig"] or {}).items():
        # Appended verbatim after the chart's own sections: one key twice is a broken file.
        assert key not in instance, f"additionalInstanceConfig repeats {key!r}, which the chart renders already"
        instance[key] = section
    return instance


def chart_run_launcher(v: Mapping[str, Any]) -> dict[str, Any]:
    """Template `dagsterYaml.runLauncher.k8s`: runLauncher.config.k8sRunLauncher as launcher config."""
    assert v["runLauncher"]["type"] == "K8sRunLauncher"
    k8s = v["runLauncher"]["config"]["k8sRunLauncher"]
    config: dict[str, Any] = {
        "load_incluster_config": k8s["loadInclusterConfig"],
        "job_namespace": k8s["jobNamespace"] or NAMESPACE,
        "image_pull_policy": k8s["imagePullPolicy"],
        "service_account_name": v["global"]["serviceAccountName"] or v["serviceAccount"]["name"] or RELEASE,
        "dagster_home": v["global"]["dagsterHome"],
        "instance_config_map": f"{_fullname('dagster')}-instance",
        "postgres_password_secret": v["global"]["postgresqlSecretName"],
    }
    if v["imagePullSecrets"]:
        config["image_pull_secrets"] = v["imagePullSecrets"]
    names = {"envConfigMaps": "env_config_maps", "envSecrets": "env_secrets"}
    for key, name in names.items():
        if k8s[key]:
            config[name] = [ref["name"] for ref in k8s[key] if "name" in ref]
    for key, name in (("envVars", "env_vars"), ("volumeMounts", "volume_mounts"), ("volumes", "volumes")):
        if k8s[key]:
            config[name] = k8s[key]
    for key in ("labels", "resources"):
        if k8s[key]:
            config[key] = k8s[key]
    return {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": config}


def user_code_container_context(values: Mapping[str, Any], deployment: Mapping[str, Any]) -> dict[str, Any]:
    """Template `dagsterUserDeployments.k8sContainerContext` (dagster-user-deployments subchart):
    what the chart passes to a location's code server (DAGSTER_CLI_API_GRPC_CONTAINER_CONTEXT);
    each run of the location carries it to the launcher."""
    v = merged_values(values)
    fullname = _fullname("dagster-user-deployments")
    k8s: dict[str, Any] = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [f"{fullname}-{deployment['name']}-user-env"]
        + [ref["name"] for ref in deployment.get("envConfigMaps", []) if "name" in ref],
        "namespace": NAMESPACE,
        "service_account_name": v["global"]["serviceAccountName"] or f"{fullname}-user-deployments",
    }
    if v["imagePullSecrets"]:
        k8s["image_pull_secrets"] = v["imagePullSecrets"]
    if deployment.get("envSecrets"):
        k8s["env_secrets"] = [ref["name"] for ref in deployment["envSecrets"] if "name" in ref]
    for key, name in (("volumeMounts", "volume_mounts"), ("volumes", "volumes"), ("labels", "labels")):
        if deployment.get(key):
            k8s[name] = deployment[key]
    if deployment.get("resources"):
        k8s["resources"] = deployment["resources"]
    if isinstance(deployment.get("env"), list) and deployment["env"]:
        k8s["env"] = deployment["env"]
    return {"k8s": k8s}


def user_code_image(deployment: Mapping[str, Any]) -> str:
    """Template `dagster.dagsterImage.name`: the code server's DAGSTER_CURRENT_IMAGE."""
    return f"{deployment['image']['repository']}:{deployment['image']['tag']}"


def load_values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


def deployments() -> list[dict[str, Any]]:
    return load_values()["dagster-user-deployments"]["deployments"]


# --- The instance: every setting of dagster.yaml, as the chart renders it ---------------------

DEFAULT_SCHEDULER = {"module": "dagster._core.scheduler", "class": "DagsterDaemonScheduler"}
# On Kubernetes each run is a Job; on the Pis it runs in its code server. Run monitoring works for
# both: the K8sRunLauncher checks a run's Job the way the project's launcher asks a code server.
DIFFERS_ON_PURPOSE = {"run_launcher"}
SAME_SECTIONS = ["run_coordinator", "compute_logs", "run_monitoring", "run_retries", "retention", "telemetry"]


@pytest.fixture(scope="module")
def rendered() -> dict[str, Any]:
    return chart_instance(load_values())


@pytest.fixture(scope="module")
def production() -> dict[str, Any]:
    return yaml.safe_load(INSTANCE.read_text())


@pytest.mark.parametrize("section", SAME_SECTIONS)
def test_the_chart_renders_the_section_as_dagster_yaml_has_it(section, rendered, production):
    assert rendered.get(section) == production[section], f"{section} differs from dagster.yaml"


def test_the_chart_stores_in_postgres_through_psycopg2_as_dagster_yaml_does(rendered, production, monkeypatch):
    wanted = production["storage"]["postgres"]["postgres_db"]
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "not-a-password")
    for name in ("run_storage", "event_log_storage", "schedule_storage"):
        section = rendered[name]
        assert section["module"].startswith("dagster_postgres."), name
        db = section["config"]["postgres_db"]
        assert db.get("scheme") == wanted["scheme"] == "postgresql+psycopg2", f"{name}: psycopg 3 breaks event writes"
        assert db["password"] == wanted["password"] == {"env": "DAGSTER_PG_PASSWORD"}, "the login stays a secret"
        assert db["params"] == wanted.get("params", {})
        # dagster-postgres accepts the section, and SQLAlchemy picks psycopg2 from its URL.
        storage = getattr(importlib.import_module(section["module"]), section["class"])
        checked = process_config(resolve_to_config_type(storage.config_type()), section["config"])
        assert checked.success, checked.errors
        assert sqlalchemy.engine.make_url(pg_url_from_config(checked.value)).get_dialect().driver == "psycopg2"


def test_the_scheduler_is_dagsters_default_on_both(rendered, production):
    assert rendered["scheduler"] == production.get("scheduler", DEFAULT_SCHEDULER)


def test_every_setting_of_either_instance_is_compared(rendered, production):
    """A section added to dagster.yaml (or to the values) fails here until it is compared."""
    compared = {*SAME_SECTIONS, "scheduler", *DIFFERS_ON_PURPOSE}
    storage = {"run_storage", "event_log_storage", "schedule_storage"}
    assert set(production) - {"storage"} <= compared, f"not compared: {set(production) - {'storage'} - compared}"
    assert set(rendered) - storage <= compared, f"not compared: {set(rendered) - storage - compared}"
    assert (rendered["run_launcher"]["module"], rendered["run_launcher"]["class"]) == ("dagster_k8s", "K8sRunLauncher")


class BatchApi:
    """Kubernetes' batch API as the launcher calls it, keeping the Jobs instead of creating them."""

    def __init__(self) -> None:
        self.created: list[tuple[str, Any]] = []

    def create_namespaced_job(self, body: Any, namespace: str, **_: Any) -> None:
        self.created.append((namespace, body))


@pytest.fixture
def batch_api() -> BatchApi:
    return BatchApi()


@pytest.fixture
def instance(monkeypatch, tmp_path, rendered, batch_api) -> Iterator[dg.DagsterInstance]:
    """An instance with the chart's settings (storage aside: sqlite instead of a server), loaded
    and checked by Dagster itself; its K8sRunLauncher neither reads a kubeconfig nor calls a
    cluster, it hands its Jobs to `batch_api`."""
    loaded: list[Mapping[str, Any]] = []
    monkeypatch.setattr("dagster_k8s.launcher.load_kubernetes_config", lambda **kwargs: loaded.append(kwargs))
    monkeypatch.setenv("HARMONIZER_COMPUTE_LOG_BUCKET", "harmonizer-compute-logs")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    sections = {k: v for k, v in rendered.items() if not k.endswith("storage")}
    with dg.instance_for_test(overrides=sections, temp_dir=str(tmp_path)) as test_instance:
        launcher = test_instance.run_launcher
        assert isinstance(launcher, K8sRunLauncher)
        assert loaded == [{"load_incluster_config": True, "kubeconfig_file": None, "k8s_api_ssl_ca_cert_file": None}], (
            "the launcher reaches the cluster from inside it"
        )
        launcher._api_client.batch_api = batch_api
        yield test_instance


def test_dagster_loads_the_rendered_instance_with_the_projects_classes(instance):
    assert type(instance.run_coordinator).__name__ == "AssetTaggedRunCoordinator"
    assert isinstance(instance.compute_log_manager, S3ComputeLogManager), "step output reaches the UI"
    assert instance.run_monitoring_enabled and instance.run_monitoring_max_resume_run_attempts == 0
    assert instance.run_retries_max_retries == 2 and not instance.run_retries_retry_on_asset_or_op_failure
    assert not instance.telemetry_enabled
    assert instance.run_launcher.supports_check_run_worker_health, "run monitoring sees a lost run's Job"


def launch_a_run(
    instance: dg.DagsterInstance, batch_api: BatchApi, deployment: Mapping[str, Any], monkeypatch
) -> dict[str, Any]:
    """What the K8sRunLauncher sends to the cluster for a run of the location's first job,
    as Kubernetes reads it (camelCase, no nulls)."""
    for env in deployment["env"]:
        monkeypatch.setenv(env["name"], env["value"])
    job = sorted(build_definitions().resolve_all_job_defs(), key=lambda j: (not j.name.startswith("load_"), j.name))[0]
    repository = RepositoryPythonOrigin(
        executable_path="/usr/local/bin/python",
        code_pointer=ModuleCodePointer("harmonizer_dagster", "defs", working_directory=None),
        container_image=user_code_image(deployment),
        entry_point=["dagster"],
        container_context=user_code_container_context(load_values(), deployment),
    )
    # The chart's Service of a location is named as the location (the workspace's host).
    location = GrpcServerCodeLocationOrigin(host=deployment["name"], port=4000, location_name=deployment["name"])
    run = instance.add_run(
        DagsterRun(
            job_name=job.name,
            run_id=str(uuid.uuid4()),
            tags=dict(job.tags),
            job_code_origin=JobPythonOrigin(job.name, repository),
            remote_job_origin=RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), job.name),
        )
    )
    instance.run_launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    ((namespace, body),) = batch_api.created
    assert namespace == NAMESPACE
    manifest = kubernetes.client.ApiClient().sanitize_for_serialization(body)
    manifest["metadata"]["namespace"] = namespace
    return manifest


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d["name"])
def test_a_run_of_each_location_is_a_valid_job_with_its_image_env_secrets_and_resources(
    deployment, instance, batch_api, monkeypatch
):
    job = launch_a_run(instance, batch_api, deployment, monkeypatch)
    assert kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION
    pod = job["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "registry.example.org/harmonizer_dagster:0.1.0"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["args"][:3] == ["dagster", "api", "execute_run"]
    env = {e["name"]: e for e in container["env"]}
    harmonizer = {name: e["value"] for name, e in env.items() if name.startswith("HARMONIZER_")}
    assert harmonizer == {e["name"]: e["value"] for e in deployment["env"]}, "the location's settings"
    assert env["DAGSTER_HOME"]["value"] == "/opt/dagster/dagster_home"
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"] == {
        "secretKeyRef": {"name": "dagster-postgresql-secret", "key": "postgresql-password"}
    }, "the instance login, from its secret"
    secrets = {source["secretRef"]["name"] for source in container["envFrom"] if "secretRef" in source}
    assert secrets == {"harmonizer-warehouse", "harmonizer-s3"}, "the warehouse login and the compute log bucket"
    assert not [e for e in container["env"] if "value" in e and "://" in e["value"]], "no login as a plain value"
    # The run worker reads the instance from its arguments, not from a mounted file.
    ref = json.loads(container["args"][3])["instance_ref"]
    production = yaml.safe_load(INSTANCE.read_text())
    assert ref["compute_logs_data"]["module_name"] == production["compute_logs"]["module"]
    assert {k: ref["settings"][k] for k in ("run_monitoring", "run_retries")} == {
        k: production[k] for k in ("run_monitoring", "run_retries")
    }
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    labels = pod["metadata"]["labels"]
    assert labels["harmonizer/location"] == deployment["name"]
    assert labels["app.kubernetes.io/part-of"] == "harmonizer"
    assert labels["dagster/code-location"] == deployment["name"]
    assert labels["app.kubernetes.io/component"] == "run_worker"
    assert job["metadata"]["labels"]["dagster/code-location"] == deployment["name"]


def pinned_dagster() -> str:
    """The dagster version pyproject.toml pins as its floor: the chart version to install."""
    (requirement,) = [
        r for r in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"] if r.startswith("dagster>=")
    ]
    return requirement.removeprefix("dagster>=").split(",")[0]


def test_the_values_and_docs_install_the_chart_of_the_pinned_dagster():
    pinned = pinned_dagster()
    installed = version("dagster")
    assert installed.split(".")[:2] == pinned.split(".")[:2], f"the tests ran dagster {installed}, not {pinned}'s"
    command = f"helm upgrade --install dagster dagster/dagster --version {pinned}"
    assert command in VALUES.read_text(), "the values name the chart they were proven with"
    assert command in " ".join(FLEET_DOC.read_text().replace("\\\n", " ").split()), "the docs' command pins it"


# --- With Dagster's chart: lint, render, validate -------------------------------------------


def helm() -> str:
    found = shutil.which("helm")
    if not found:
        pytest.skip("helm is not installed (docs/fleet.md: Kubernetes, proving the values)")
    return found


@pytest.fixture(scope="module")
def chart() -> Path:
    path = os.environ.get(CHART_ENV)
    if not path:
        pytest.skip(f"{CHART_ENV} names no unpacked Dagster chart (helm pull dagster/dagster --untar)")
    chart = Path(path)
    pinned = pinned_dagster()
    assert yaml.safe_load((chart / "Chart.yaml").read_text())["version"] == pinned, f"the chart is not {pinned}"
    return chart


def validate_values_against_chart_schema(chart: Path) -> None:
    """The chart's values.schema.json, applied here instead of by helm: its Kubernetes $refs
    name definitions by URL, which resolve to the 1.30 definitions kubernetes-validate ships."""
    local = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}.0-local"
    # kubernetes-validate keeps them under $defs (JSON Schema 2020-12), the chart's refs
    # point into `definitions` (draft 7): the same definitions, under the older key.
    shipped = json.loads((local / "_definitions.json").read_text().replace('"#/$defs/', '"#/definitions/'))
    definitions = {"definitions": shipped["$defs"]}

    def retrieve(uri: str) -> referencing.Resource:
        if not uri.endswith("/_definitions.json"):
            raise referencing.exceptions.NoSuchResource(ref=uri)
        return referencing.Resource.from_contents(definitions, default_specification=DRAFT7)

    schema = json.loads((chart / "values.schema.json").read_text())
    registry: referencing.Registry = referencing.Registry(retrieve=retrieve)
    values = merged_values_of_chart(chart)
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    validator(schema, registry=registry).validate(values)


def merged_values_of_chart(chart: Path) -> dict[str, Any]:
    """The chart's own values.yaml with ours over it, as helm gives them to the schema."""
    return helm_merge(yaml.safe_load((chart / "values.yaml").read_text()), load_values())


def render(chart: Path) -> list[dict[str, Any]]:
    binary = helm()
    validate_values_against_chart_schema(chart)
    # The schema is applied above, offline; helm would fetch its Kubernetes definitions.
    common = ["-f", str(VALUES), "--namespace", NAMESPACE, "--skip-schema-validation"]
    lint = subprocess.run([binary, "lint", str(chart), *common, "--strict"], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    out = subprocess.run(
        [binary, "template", RELEASE, str(chart), *common, "--kube-version", f"{KUBERNETES_VERSION}.0"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_the_chart_renders_the_values_into_valid_manifests(chart):
    manifests = render(chart)
    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    assert not [m for m in manifests if m["kind"] == "Secret" and (m.get("data") or m.get("stringData"))], (
        "every secret is created beside the chart, none rendered with a value"
    )
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for manifest in manifests:
        by_kind.setdefault(manifest["kind"], []).append(manifest)
    instance = next(m for m in by_kind["ConfigMap"] if m["metadata"]["name"] == f"{RELEASE}-instance")
    rendered = yaml.safe_load(instance["data"]["dagster.yaml"])
    assert rendered == chart_instance(load_values()), "the helper renders the instance as the chart does"
    production = yaml.safe_load(INSTANCE.read_text())
    assert {k: rendered.get(k) for k in SAME_SECTIONS} == {k: production[k] for k in SAME_SECTIONS}
    for deployment in deployments():
        name = f"{_fullname('dagster-user-deployments')}-{deployment['name']}"
        (served,) = [m for m in by_kind["Deployment"] if m["metadata"]["name"] == name]
        assert [m for m in by_kind["Service"] if m["metadata"]["name"] == deployment["name"]], deployment["name"]
        (container,) = served["spec"]["template"]["spec"]["containers"]
        assert container["image"] == user_code_image(deployment)
        env = {e["name"]: e for e in container["env"]}
        for wanted in deployment["env"]:
            assert env[wanted["name"]]["value"] == wanted["value"]
        context = json.loads(env["DAGSTER_CLI_API_GRPC_CONTAINER_CONTEXT"]["value"])
        assert context == user_code_container_context(load_values(), deployment), "runs inherit what the helper says"
        secrets = {s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s}
        assert {"harmonizer-warehouse", "harmonizer-s3"} <= secrets
        assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "dagster-postgresql-secret"
