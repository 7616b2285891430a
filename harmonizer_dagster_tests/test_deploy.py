"""Deployment files parse, name the package and its module correctly, and carry no secrets;
a code location serves exactly the sources assigned to its host."""

import configparser
import importlib
import re
import subprocess
from pathlib import Path

import dagster as dg
import pytest
import yaml

from harmonizer_dagster.core.spec import SpecError
from harmonizer_dagster.definitions import build_definitions

DEPLOY = Path(__file__).parent.parent / "deploy"
WITH_SECRETS = "/opt/harmonizer/venv/bin/harmonizer with-secrets -- "
SECRET_LIKE = re.compile(r"(?<![A-Za-z])(password|secret|token)\s*[:=]\s*(?!<|\$|\{|set-|from |$)(\S+)", re.IGNORECASE)


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str
    parser.read(path)
    return parser


def test_pi_code_server_unit_serves_the_package_and_restarts():
    service = unit(DEPLOY / "pi" / "harmonizer-code-server.service")
    command = service["Service"]["ExecStart"]
    assert command.startswith(WITH_SECRETS + "/opt/harmonizer/venv/bin/dagster api grpc"), "monitoring asks it for runs"
    assert "-m harmonizer_dagster" in command and "--location-name ${HARMONIZER_LOCATION}" in command
    assert service["Service"]["Restart"] == "on-failure"
    assert service["Service"]["KillMode"] == "control-group", "run workers stop with their code server"


def test_pi_environment_names_every_setting_the_unit_and_instance_use():
    names = {
        line.split("=", 1)[0]
        for line in (DEPLOY / "pi" / "harmonizer.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert {
        "HARMONIZER_BIND_ADDRESS",
        "HARMONIZER_PORT",
        "HARMONIZER_LOCATION",
        "HARMONIZER_SOURCES",
        "HARMONIZER_HOST",
        "HARMONIZER_WAREHOUSE_URL",
        "DAGSTER_HOME",
    } <= names
    instance = yaml.safe_load((DEPLOY.parent / "dagster.yaml").read_text())
    wanted = {v["env"] for v in instance["storage"]["postgres"]["postgres_db"].values() if isinstance(v, dict)}
    assert wanted <= names


def test_install_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(DEPLOY / "pi" / "install.sh")], check=True)


def test_central_units_and_workspace():
    for name in ("dagster-webserver.service", "dagster-daemon.service"):
        command = unit(DEPLOY / "central" / name)["Service"]["ExecStart"]
        assert command.startswith(WITH_SECRETS), "the instance login may come from Secrets Manager"
        assert "-w /etc/harmonizer/workspace.yaml" in command
    assert "-h 127.0.0.1" in unit(DEPLOY / "central" / "dagster-webserver.service")["Service"]["ExecStart"], (
        "the webserver is only reachable through the authenticating proxy"
    )
    workspace = yaml.safe_load((DEPLOY / "central" / "workspace.yaml").read_text())
    pis = [entry["grpc_server"]["location_name"] for entry in workspace["load_from"] if "grpc_server" in entry]
    central = [entry["python_module"] for entry in workspace["load_from"] if "python_module" in entry]
    assert len(pis) == len(set(pis)) >= 2
    assert [(c["module_name"], c["location_name"]) for c in central] == [("harmonizer_dagster", "central")]
    settings = (DEPLOY / "central" / "central.env.example").read_text().splitlines()
    assert {"HARMONIZER_SOURCES=none", "HARMONIZER_ALERTS=fleet"} <= set(settings)
    assert "HARMONIZER_ALERTS=off" in (DEPLOY / "pi" / "harmonizer.env.example").read_text().splitlines()


def test_compose_and_helm_values_use_the_package():
    compose = yaml.safe_load((DEPLOY / "central" / "docker-compose.yml").read_text())
    assert {"postgres", "webserver", "daemon", "proxy"} <= set(compose["services"])
    assert compose["services"]["daemon"]["command"][:5] == ["harmonizer", "with-secrets", "--", "dagster-daemon", "run"]
    assert "basic_auth" in (DEPLOY / "central" / "Caddyfile").read_text()
    values = yaml.safe_load((DEPLOY / "k8s" / "values.yaml").read_text())
    deployments = values["dagster-user-deployments"]["deployments"]
    assert all(d["dagsterApiGrpcArgs"] == ["-m", "harmonizer_dagster"] for d in deployments)
    served = [env["value"] for d in deployments for env in d["env"] if env["name"] == "HARMONIZER_SOURCES"]
    assert sorted(",".join(s for s in served if s != "none").split(",")) == [
        "business_registry",
        "court_records",
        "news_articles",
    ], "every source is served by exactly one location"
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    coordinator = values["dagsterDaemon"]["runCoordinator"]["config"]["customRunCoordinator"]
    instance = yaml.safe_load((DEPLOY.parent / "dagster.yaml").read_text())["run_coordinator"]
    assert (coordinator["module"], coordinator["class"]) == (instance["module"], instance["class"])
    assert coordinator["config"]["tag_concurrency_limits"] == instance["config"]["tag_concurrency_limits"]
    images = {values[name]["image"]["repository"] for name in ("dagsterWebserver", "dagsterDaemon")}
    assert images == {d["image"]["repository"] for d in deployments}, "they import the project's coordinator"
    assert "pip install --no-cache-dir '.[k8s]'" in (DEPLOY / "central" / "Dockerfile").read_text(), (
        "the image has the K8sRunLauncher"
    )


def test_the_triage_page_is_served_behind_the_proxy_under_dq():
    service = unit(DEPLOY / "central" / "harmonizer-dq.service")["Service"]
    assert service["ExecStart"].startswith(WITH_SECRETS + "/opt/harmonizer/venv/bin/harmonizer dq serve")
    assert "--host 127.0.0.1" in service["ExecStart"], "reachable only through the authenticating proxy"
    assert service["EnvironmentFile"] == "/etc/harmonizer/central.env" and service["Restart"] == "on-failure"
    settings = (DEPLOY / "central" / "central.env.example").read_text().splitlines()
    assert {"HARMONIZER_DQ_ROOT_PATH=/dq", "HARMONIZER_DAGSTER_URL=http://127.0.0.1:3000"} <= set(settings)
    caddy = (DEPLOY / "central" / "Caddyfile").read_text()
    assert "handle_path /dq/*" in caddy and "header_up X-Forwarded-User {http.auth.user.id}" in caddy
    assert caddy.index("basic_auth") < caddy.index("handle_path /dq/*"), "the page is behind the password too"
    compose = yaml.safe_load((DEPLOY / "central" / "docker-compose.yml").read_text())
    dq = compose["services"]["dq"]
    assert dq["command"][:6] == ["harmonizer", "with-secrets", "--", "harmonizer", "dq", "serve"]
    assert dq["environment"]["HARMONIZER_DQ_ROOT_PATH"] == "/dq" and "ports" not in dq, "only the proxy reaches it"
    assert compose["services"]["proxy"]["environment"]["HARMONIZER_DQ"] == "dq:8090"
    block = yaml.safe_load((DEPLOY / "k8s" / "values.yaml").read_text())["harmonizerDq"]
    assert block["command"][:3] == ["harmonizer", "dq", "serve"]
    assert {"name": "HARMONIZER_DQ_ROOT_PATH", "value": "/dq"} in block["env"]


def test_the_production_instance_monitors_runs_through_the_code_servers():
    instance = yaml.safe_load((DEPLOY.parent / "dagster.yaml").read_text())
    launcher = instance["run_launcher"]
    module = importlib.import_module(launcher["module"])
    assert issubclass(getattr(module, launcher["class"]), dg.DefaultRunLauncher)
    assert instance["run_monitoring"]["enabled"] and instance["run_retries"]["enabled"]
    assert instance["run_monitoring"]["max_resume_run_attempts"] == 0, "lost runs are retried, not resumed"


def test_no_secrets_in_deployment_files():
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            found = SECRET_LIKE.findall(path.read_text())
            assert not found, f"{path.name} looks like it holds a secret: {found}"


def test_a_location_serves_only_its_assigned_sources_and_tags_its_host(monkeypatch):
    monkeypatch.setenv("HARMONIZER_SOURCES", "court_records, news_articles")
    monkeypatch.setenv("HARMONIZER_HOST", "pi-b")
    defs = build_definitions()
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "business_registry" not in keys and {"court_records", "news_articles"} <= keys
    for job in ("load_court_records", "load_court_records_files"):
        assert defs.resolve_job_def(job).tags == {"source": "court_records", "harmonizer/host": "pi-b"}, job
    monkeypatch.setenv("HARMONIZER_SOURCES", "court_records,nope")
    with pytest.raises(SpecError, match="unknown sources: nope"):
        build_definitions()


def test_the_central_location_serves_no_source_and_a_pi_can_leave_alerts_to_it(monkeypatch):
    monkeypatch.setenv("HARMONIZER_SOURCES", "none")
    monkeypatch.setenv("HARMONIZER_ALERTS", "fleet")
    central = build_definitions()
    assert not list(central.resolve_asset_graph().get_all_asset_keys())
    assert {job.name for job in central.resolve_all_job_defs()} == {"triage_issues", "housekeeping", "backup_warehouse"}
    assert {s.name for s in central.schedules} == {"housekeeping_daily"}, "every location sweeps its own staging"
    assert {s.name for s in central.sensors} == {"run_failure_alerts", "run_success_alerts", "stalled_run_alerts"}
    monkeypatch.setenv("HARMONIZER_SOURCES", "court_records")
    monkeypatch.setenv("HARMONIZER_ALERTS", "off")
    pi = build_definitions()
    assert not {"run_failure_alerts", "run_success_alerts", "stalled_run_alerts"} & {s.name for s in pi.sensors}
