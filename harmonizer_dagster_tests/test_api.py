"""The HTTP API (/api/v1) through a real uvicorn server and an HTTP client: keys and their
scopes and rate, files handed in to a landing folder and to S3 (whole or not at all, one
writer per name, the landing folder's name rules), a large upload in bounded memory, the
daemon loading an upload that the client then follows to its rows, and triage over HTTP
doing exactly what the CLI does."""

from __future__ import annotations

import getpass
import hashlib
import http.client
import json
import os
import secrets
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from harmonizer_dagster.cli import main
from harmonizer_dagster.core.sql import quote_ident
from harmonizer_dagster.core.versions import state
from harmonizer_dagster.core.warehouse import Warehouse, open_warehouse
from harmonizer_dagster.orchestration.run_config import files_job_name
from harmonizer_dagster_tests.api_server import ApiServer, start_server, start_webserver, stop, stop_server
from harmonizer_dagster_tests.conftest import SAMPLE, WAREHOUSES, drop_schemas, land, load_file, registry_rows
from harmonizer_dagster_tests.fleet import free_port, wait_for
from harmonizer_dagster_tests.test_held_web import HELD_FILE, REASON, crafted_file

SOURCE = "business_registry"
Q3 = SAMPLE.name
Q4 = "registry_2026-Q4.csv.gz"
Q4_BYTES = (SAMPLE.parent / Q4).read_bytes()


@pytest.fixture
def api_env(tmp_path, monkeypatch) -> dict[str, str]:
    """A server's environment: a landing folder and DuckDB file of the test's own, and no Dagster
    webserver; the test process's CLI reads the same warehouse."""
    drop = tmp_path / "drop"
    (drop / SOURCE).mkdir(parents=True)
    settings = {
        "HARMONIZER_WAREHOUSE_URL": f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
        "HARMONIZER_LANDING_DIR": str(drop),
        "HARMONIZER_STAGING_DIR": str(tmp_path / "staging"),
        "HARMONIZER_DAGSTER_URL": f"http://127.0.0.1:{free_port()}",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **settings}


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(env: dict[str, str]):
        servers.append(start_server(env, tmp_path / "api.log"))
        return servers[-1]

    yield start
    for server in servers:
        stop_server(server)


def make_key(capsys, name: str, *scopes: str) -> str:
    capsys.readouterr()
    assert main(["api-key", "create", name, *(f"--scope={scope}" for scope in scopes)]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("hzk_") and len(token) > 40
    return token


def landed(folder: Path) -> list[str]:
    """Every entry below the folder, hidden ones included."""
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*"))


def partial_put(base: str, key: str, path: str, length: int, first: bytes) -> http.client.HTTPConnection:
    """A PUT whose headers announce `length` bytes and whose body so far is `first`."""
    url = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    connection.putrequest("PUT", url.path + path)
    connection.putheader("Authorization", f"Bearer {key}")
    connection.putheader("Content-Length", str(length))
    connection.endheaders()
    connection.send(first)
    return connection


@pytest.mark.parametrize(
    ("registry", "run", "expected"),
    [
        (None, None, ("queued", None)),
        (None, "QUEUED", ("queued", None)),
        (None, "STARTED", ("running", None)),
        (None, "CANCELED", ("canceled", "its Dagster run ended canceled")),
        (None, "FAILURE", ("failed", "its Dagster run ended failure")),
        (None, "SUCCESS", ("superseded", "its run loaded the file as it was then, which is no longer these bytes")),
        ("processing", "STARTED", ("running", None)),
        ("processing", "FAILURE", ("failed", "its Dagster run ended failure")),
        ("staged", None, ("loaded", None)),
        ("held", None, ("held", "blocking check(s) failed: max_rejected_rate")),
        ("completed", None, ("published", None)),
        ("failed", None, ("failed", "ValueError: no header")),
    ],
)
def test_a_files_state_is_the_registrys_and_its_runs_where_the_registry_cannot_tell(registry, run, expected):
    version = registry and {
        "status": registry,
        "held_because": "max_rejected_rate",
        "error_message": "ValueError: no header",
    }
    assert state(version, run) == expected


def test_keys_scopes_revocation_and_the_rate_limit(api_env, serve, capsys):
    stored = "hzk_" + secrets.token_urlsafe(32)
    from_store = {"ops-reader": {"sha256": hashlib.sha256(stored.encode()).hexdigest(), "scopes": ["read"]}}
    server = serve(api_env | {"HARMONIZER_API_RATE_LIMIT": "30", "HARMONIZER_API_KEYS": json.dumps(from_store)})
    reader = make_key(capsys, "reader", "read")
    uploader = make_key(capsys, "uploader", "upload", "read")
    drop = Path(api_env["HARMONIZER_LANDING_DIR"])

    with server.client() as anonymous:
        assert anonymous.get("/health").json() == {"status": "ok"}
        assert anonymous.get("/version").json()["api"] == "v1"
        document = anonymous.get("/openapi.json").json()
        assert {"/sources/{source}/files", "/uploads/{upload_id}", "/issues/actions"} <= document["paths"].keys()
        missing = anonymous.get("/issues")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    with server.client("hzk_" + secrets.token_urlsafe(32)) as stranger:
        assert stranger.get("/issues").status_code == 401
    with server.client(stored) as configured:
        assert configured.get("/issues").status_code == 200, "a key from the secrets store"
    with server.client(reader) as client:
        assert client.get("/issues").status_code == 200
        refused = client.put(f"/sources/{SOURCE}/files/{Q3}", content=SAMPLE.read_bytes())
        assert refused.status_code == 403 and "upload scope" in refused.json()["detail"]
    assert landed(drop) == [SOURCE]

    with server.client(uploader) as client:
        assert client.put(f"/sources/{SOURCE}/files/{Q3}", content=SAMPLE.read_bytes()).status_code == 201
        assert main(["api-key", "revoke", "uploader"]) == 0
        assert client.get("/issues").status_code == 401, "revoked: refused at once"

    with server.client(reader) as client:
        answers = [client.get("/sources") for _ in range(40)]
    codes = [answer.status_code for answer in answers]
    assert 429 in codes and codes.count(200) <= 30
    limited = answers[codes.index(429)]
    assert int(limited.headers["retry-after"]) >= 1 and "30 requests a minute" in limited.json()["detail"]


def test_names_a_landing_folder_would_not_load_are_refused_and_nothing_lands(api_env, serve, capsys):
    server = serve(api_env)
    key = make_key(capsys, "uploader", "upload")
    drop = Path(api_env["HARMONIZER_LANDING_DIR"])
    data = SAMPLE.read_bytes()
    with server.client(key) as client:
        for name in ("../escape.csv", "sub/dir.csv", ".hidden.csv", "_temporary.csv", "nul\0byte.csv", "data.exe"):
            raw = client.post(f"/sources/{SOURCE}/files", params={"name": name}, content=data)
            assert raw.status_code == 400, (name, raw.text)
            # httpx writes a multipart file name's NUL as %00: that body is made by hand below.
            if "\0" not in name:
                multipart = client.post(f"/sources/{SOURCE}/files", files={"file": (name, data)})
                assert multipart.status_code == 400, (name, multipart.text)
        body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="nul\0byte.csv"\r\n\r\nk\r\n--b--\r\n'
        headers = {"Content-Type": "multipart/form-data; boundary=b"}
        assert client.post(f"/sources/{SOURCE}/files", content=body, headers=headers).status_code == 400
        assert client.put(f"/sources/{SOURCE}/files/nul%00byte.csv", content=data).status_code == 400
        assert client.put(f"/sources/{SOURCE}/files/..%2Fescape.csv", content=data).status_code == 404
        assert (
            client.put(f"/sources/{SOURCE}/files/data.exe", content=data)
            .json()["detail"]
            .endswith("ends with .csv or .tsv or .txt or .csv.gz or .tsv.gz or .txt.gz")
        )
        assert client.put(f"/sources/no_such_source/files/{Q3}", content=data).status_code == 404
    assert landed(drop) == [SOURCE] and not [path for path in drop.parent.rglob("*") if "escape" in path.name]


def test_an_upload_cut_short_leaves_nothing_and_one_name_has_one_writer_at_a_time(api_env, serve, capsys):
    server = serve(api_env)
    key = make_key(capsys, "uploader", "upload", "read")
    folder = Path(api_env["HARMONIZER_LANDING_DIR"]) / SOURCE
    data = SAMPLE.read_bytes() * 40  # 5.8 MB: several writes

    cut = partial_put(server.base, key, f"/sources/{SOURCE}/files/{Q3}", len(data), data[: 3 << 20])
    wait_for(lambda: landed(folder) == [f".{Q3}.upload"], 10, "the partial upload to be written")
    cut.sock.close()
    wait_for(lambda: landed(folder) == [], 10, "the partial upload to be removed")

    first = partial_put(server.base, key, f"/sources/{SOURCE}/files/{Q3}", len(data), data[: 2 << 20])
    wait_for(lambda: landed(folder) == [f".{Q3}.upload"], 10, "the first upload to start")
    with server.client(key) as client:
        second = client.put(f"/sources/{SOURCE}/files/{Q3}", content=b"other bytes\n")
        assert second.status_code == 409 and "being uploaded" in second.json()["detail"]
        first.send(data[2 << 20 :])
        answer = first.getresponse()
        assert answer.status == 201
        handed = json.loads(answer.read())
        assert handed["sha256"] == hashlib.sha256(data).hexdigest() and handed["size_bytes"] == len(data)
        assert landed(folder) == [Q3] and (folder / Q3).read_bytes() == data
        # Once the first is in place, the same name may be handed in again: a corrected file.
        again = client.put(f"/sources/{SOURCE}/files/{Q3}", content=SAMPLE.read_bytes())
        assert again.status_code == 201 and (folder / Q3).read_bytes() == SAMPLE.read_bytes()
        status = client.get(again.json()["status_url"]).json()
        assert status["state"] == "queued" and status["sha256"] == hashlib.sha256(SAMPLE.read_bytes()).hexdigest()


def test_an_upload_over_the_size_limit_is_refused_and_removed(api_env, serve, capsys):
    server = serve(api_env | {"HARMONIZER_UPLOAD_MAX_BYTES": "100000"})
    key = make_key(capsys, "uploader", "upload")
    folder = Path(api_env["HARMONIZER_LANDING_DIR"]) / SOURCE
    with server.client(key) as client:
        announced = client.put(f"/sources/{SOURCE}/files/{Q3}", content=SAMPLE.read_bytes())
        assert announced.status_code == 413
        chunks = (SAMPLE.read_bytes()[i : i + 50_000] for i in range(0, 150_000, 50_000))
        streamed = client.post(f"/sources/{SOURCE}/files", params={"name": Q3}, content=chunks)
        assert streamed.status_code == 413 and "100,000 bytes" in streamed.json()["detail"]
    assert landed(folder) == []


LARGE_BYTES = int(os.environ.get("HARMONIZER_TEST_UPLOAD_MB", "500")) << 20
MEMORY_BUDGET = 150 << 20


def test_a_500_mb_upload_streams_through_in_bounded_memory(api_env, serve, capsys, tmp_path):
    server = serve(api_env)
    key = make_key(capsys, "uploader", "upload")
    line = SAMPLE.read_bytes().splitlines(keepends=True)[1]
    block = line * ((1 << 20) // len(line))
    big = tmp_path / "big.csv"
    digest = hashlib.sha256()
    with big.open("wb") as out:
        while out.tell() < LARGE_BYTES:
            out.write(block)
            digest.update(block)
    size = big.stat().st_size
    with server.client(key, timeout=600) as client:
        assert client.get("/health").status_code == 200
        idle = server.memory("VmHWM")
        with big.open("rb") as body:
            answer = client.put(f"/sources/{SOURCE}/files/big.csv", content=body)
        peak = server.memory("VmHWM")
    big.unlink()
    assert answer.status_code == 201, answer.text
    assert answer.json()["sha256"] == digest.hexdigest() and answer.json()["size_bytes"] == size
    landed_file = Path(api_env["HARMONIZER_LANDING_DIR"]) / SOURCE / "big.csv"
    assert landed_file.stat().st_size == size
    print(f"upload of {size >> 20} MiB: server peak RSS {idle >> 20} MiB idle, {peak >> 20} MiB after")
    assert peak - idle < MEMORY_BUDGET, f"peak RSS grew by {(peak - idle) >> 20} MiB"


def test_a_file_handed_in_is_loaded_by_the_daemon_and_followed_to_published_rows(
    daemon_env, start_daemon, serve, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("HARMONIZER_WAREHOUSE_URL", daemon_env["HARMONIZER_WAREHOUSE_URL"])
    server = serve(daemon_env | {"HARMONIZER_DAGSTER_URL": f"http://127.0.0.1:{free_port()}"})
    key = make_key(capsys, "ci-uploader", "upload", "read")
    start_daemon(daemon_env)
    with server.client(key) as client:
        handed = client.post(f"/sources/{SOURCE}/files", files={"file": (Q3, SAMPLE.read_bytes())})
        assert handed.status_code == 201, handed.text
        answer = handed.json()
        assert (
            answer["version"] == "2026-Q3" and answer["partition_key"] == Q3 and answer["uploaded_by"] == "ci-uploader"
        )
        seen = []

        def published():
            status = client.get(answer["status_url"]).json()
            seen.append(status["state"])
            return status if status["state"] == "published" else None

        status = wait_for(published, 180, "the upload to be published", interval=0.3)
        assert seen[0] == "queued"
        assert status["counts"]["records_in_file"] == 1006 and status["counts"]["records_imported"] == 988
        assert status["counts"]["records_failed"] == 12
        assert {check["check_name"] for check in status["checks"]} and all("passed" in c for c in status["checks"])
        version_id = status["version_id"]
        assert client.get(status["version_url"]).json()["state"] == "published"
        versions = client.get(f"/sources/{SOURCE}/versions", params={"status": "completed"}).json()
        assert versions["total"] == 1 and versions["versions"][0]["source_id"] == version_id

        issues = client.get(f"/versions/{version_id}/issues", params={"limit": 20}).json()
        assert issues["total"] == 30 and issues["pages"] == 2 and len(issues["issues"]) == 20
        failed = client.get(f"/versions/{version_id}/failed-records").json()
        assert failed["total"] == 12
        rows = client.get(f"/versions/{version_id}/rows", params={"format": "csv"})
        assert rows.headers["content-type"].startswith("text/csv")
        lines = rows.text.splitlines()
        assert lines[0].startswith("corp_number,") and len(lines) == 1 + 988
        parquet = client.get(f"/versions/{version_id}/rows", params={"format": "parquet"})
        (tmp_path / "rows.parquet").write_bytes(parquet.content)
        import pyarrow.parquet as pq

        assert pq.read_table(tmp_path / "rows.parquet").num_rows == 988
        failed_csv = client.get(f"/versions/{version_id}/failed-records", params={"format": "csv"}).text
        assert len(failed_csv.splitlines()) == 1 + 12
    with dg.DagsterInstance.from_config(daemon_env["DAGSTER_HOME"]) as instance:
        assert [run.status for run in instance.get_runs()] == [dg.DagsterRunStatus.SUCCESS]


def test_a_load_started_at_once_through_dagster_is_canceled_while_queued_or_published_then_fixed_and_loaded_again(
    daemon_env, start_daemon, serve, tmp_path, capsys, monkeypatch
):
    env = daemon_env | {"HARMONIZER_AUTOMATION": "off"}  # no sensor: only the API starts loads
    monkeypatch.setenv("HARMONIZER_WAREHOUSE_URL", env["HARMONIZER_WAREHOUSE_URL"])
    webserver, dagster_url = start_webserver(env, tmp_path / "webserver.log", files_job_name(SOURCE))
    try:
        server = serve(env | {"HARMONIZER_DAGSTER_URL": dagster_url})
        key = make_key(capsys, "ci-uploader", "upload", "read")
        steward = make_key(capsys, "steward-bot", "read", "triage")
        with server.client(key) as client:
            # No daemon yet: the run waits in Dagster's queue.
            queued = client.put(f"/sources/{SOURCE}/files/{Q4}", params={"start": "true"}, content=Q4_BYTES).json()
            assert queued["run_id"] and queued["run_url"].endswith(queued["run_id"]) and queued["start_error"] is None
            assert client.get(queued["status_url"]).json()["state"] == "queued"
            canceled = client.post(f"/uploads/{queued['upload_id']}/cancel")
            assert canceled.status_code == 200 and canceled.json()["canceled_by"] == "ci-uploader"
            status = client.get(queued["status_url"]).json()
            assert (status["state"], status["run_status"]) == ("canceled", "CANCELED")
            again = client.post(f"/uploads/{queued['upload_id']}/cancel")
            assert again.status_code == 409 and "only a queued or running load" in again.json()["detail"]

            start_daemon(env)
            started = client.post(
                f"/sources/{SOURCE}/files", params={"start": "true"}, files={"file": (Q3, SAMPLE.read_bytes())}
            ).json()
            status = wait_for(
                lambda: (found := client.get(started["status_url"]).json())["state"] == "published" and found,
                180,
                "the run started at once to publish the upload",
            )
            assert status["run_id"] == started["run_id"] and status["counts"]["records_imported"] == 988

        # A fix, then its rules re-materialized through Dagster: the fixed values raise no issue.
        with server.client(steward) as client:
            fixed = client.post(
                "/issues/actions",
                json={"action": "auto_fix", "type": "invalid_zip_code", "fix": {"pad_to_width": 5}},
            ).json()
            assert fixed["issues"] > 0 and fixed["rules"]
            runs = client.post("/rules/rematerialize", json={"rules": fixed["rules"]}).json()["runs"]
            assert [run["partition"] for run in runs] == [Q3]
            wait_for(
                lambda: (
                    (found := client.get(f"/versions/{status['version_id']}").json())["state"] == "published"
                    and found["run_id"] == runs[0]["run_id"]
                ),
                180,
                "the re-materialization to publish the fixed values",
            )
            counts = client.get(f"/versions/{status['version_id']}").json()["counts"]
            assert counts["issues"] == status["counts"]["issues"] - fixed["issues"] == 18
            assert counts["records_unchanged"] == 988, "the table held the normalized values already"
            assert client.post("/rules/rematerialize", json={"rules": []}).status_code == 422
    finally:
        stop(webserver)
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        runs = {run.run_id: run for run in instance.get_runs()}
    assert runs[queued["run_id"]].status == dg.DagsterRunStatus.CANCELED
    assert runs[started["run_id"]].status == dg.DagsterRunStatus.SUCCESS
    assert runs[started["run_id"]].tags["harmonizer/upload"] == started["upload_id"]
    assert len(runs) == 3, "the landing sensor was off: no other run than the API's"


def test_a_file_handed_in_to_s3_is_one_object_loaded_as_the_s3_sensor_loads_it(
    api_env, serve, capsys, s3_endpoint, s3_bucket, specs, instance, tmp_path, monkeypatch
):
    from harmonizer_dagster.orchestration.aws import S3Resource
    from harmonizer_dagster.orchestration.resources import S3Landing
    from harmonizer_dagster.orchestration.sensors import build_s3_sensor
    from harmonizer_dagster_tests.test_sensors import RUNNING, files_job, launch, requested, tick

    bucket, s3 = s3_bucket
    env = api_env | {
        "HARMONIZER_S3_BUCKET": bucket,
        "HARMONIZER_S3_PREFIX": "landing",
        "HARMONIZER_S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    server = serve(env)
    key = make_key(capsys, "uploader", "upload", "read")
    data = SAMPLE.read_bytes() * 80  # 11.7 MB: two parts
    uri = f"s3://{bucket}/landing/{SOURCE}/{Q3}"

    cut = partial_put(server.base, key, f"/sources/{SOURCE}/files/{Q3}", len(data), data[: 9 << 20])
    wait_for(lambda: s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), 20, "a multipart upload to start")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket), "nothing is listed before it is complete"
    with server.client(key) as client:
        second = client.put(f"/sources/{SOURCE}/files/{Q3}", content=SAMPLE.read_bytes())
        assert second.status_code == 409 and "being uploaded" in second.json()["detail"]
    cut.sock.close()
    wait_for(lambda: not s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), 20, "the cut upload to be aborted")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)

    with server.client(key) as client:
        answer = client.put(f"/sources/{SOURCE}/files/{Q3}", content=data).json()
        assert answer["partition_key"] == uri and answer["sha256"] == hashlib.sha256(data).hexdigest()
        assert s3.get_object(Bucket=bucket, Key=f"landing/{SOURCE}/{Q3}")["Body"].read() == data

        sensor = build_s3_sensor(specs[SOURCE], files_job(), 10, RUNNING)
        resources = {
            "s3": S3Resource(endpoint_url=s3_endpoint, region_name="us-east-1"),
            "s3_landing": S3Landing(bucket=bucket, prefix="landing"),
        }
        _, cursor = tick(sensor, instance, None, **resources)
        ready, _ = tick(sensor, instance, cursor, **resources)
        assert requested(ready) == [uri]
        monkeypatch.setenv("HARMONIZER_S3_ENDPOINT_URL", s3_endpoint)
        monkeypatch.setenv("HARMONIZER_LANDING_DIR", api_env["HARMONIZER_LANDING_DIR"])
        launch(instance, ready.run_requests)
        status = client.get(answer["status_url"]).json()
        assert status["state"] == "published" and status["counts"]["records_imported"] == 988
    store = open_warehouse(api_env["HARMONIZER_WAREHOUSE_URL"])
    assert store.query(f"SELECT count(*) FROM {store.table(SOURCE)}") == [(988,)]


@dataclass
class Twins:
    """Two warehouses loaded alike: the CLI acts on one, the server (with `key`) on the other."""

    cli: Warehouse
    api: Warehouse
    server: ApiServer
    key: str
    specs: dict


@pytest.fixture(params=WAREHOUSES)
def twins(request, monkeypatch, specs, landing, tmp_path, serve, capsys) -> Iterator[Twins]:
    if request.param == "duckdb":
        cli_url, api_url = (f"duckdb:///{tmp_path / name}.duckdb" for name in ("cli", "api"))
    else:
        cli_url = request.getfixturevalue("postgres_url")
        api_url = f"{cli_url}_api"
        with psycopg.connect(cli_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {quote_ident(api_url.rsplit('/', 1)[1])}")
    stores = [open_warehouse(url) for url in (cli_url, api_url)]
    for store in stores:
        load_file(specs[SOURCE], landing, Q3, store, tmp_path / "s")
    monkeypatch.setenv("HARMONIZER_WAREHOUSE_URL", api_url)
    key = make_key(capsys, "steward-bot", "triage", "read")
    server = serve({**os.environ, "HARMONIZER_DAGSTER_URL": f"http://127.0.0.1:{free_port()}"})
    monkeypatch.setenv("HARMONIZER_WAREHOUSE_URL", cli_url)
    yield Twins(stores[0], stores[1], server, key, specs)
    if request.param == "postgres":
        stop_server(server)
        drop_schemas(stores[0])
        with psycopg.connect(cli_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {quote_ident(api_url.rsplit('/', 1)[1])} WITH (FORCE)")


def triage_state(store: Warehouse) -> tuple[list[tuple], ...]:
    """What triage changed, the same in two warehouses loaded alike (ids and times aside)."""
    return (
        store.query(
            "SELECT source_line_number, field_name, rule, issue_type, resolution_status, resolution_notes, "
            "fix_rule_id FROM {schema}.data_quality_issues ORDER BY 1, 2, 3, 4"
        ),
        store.query(
            "SELECT rule_id, source_type, field_name, kind, params, enabled, note, created_from_issue_type "
            "FROM {schema}.transformation_rules ORDER BY rule_id"
        ),
        store.query("SELECT * FROM {schema}.version_issue_counts ORDER BY 1, 2, 3, 4, 5, 6"),
    )


def first_pending(store: Warehouse, issue_type: str) -> str:
    rows = store.query(
        "SELECT CAST(issue_id AS VARCHAR) FROM {schema}.data_quality_issues WHERE issue_type = %s "
        "AND resolution_status = 'pending' ORDER BY source_line_number, field_name LIMIT 1",
        (issue_type,),
    )
    return rows[0][0]


def test_every_triage_action_over_http_does_what_the_same_cli_command_does(twins, capsys):
    actions = [
        (
            ["--source", SOURCE, "--type", "invalid_zip_code", "--action", "auto_fix", "--pad-to-width", "5"],
            {"source": SOURCE, "type": "invalid_zip_code", "action": "auto_fix", "fix": {"pad_to_width": 5}},
        ),
        (
            ["--type", "invalid_date", "--action", "ignore", "--note", "accepted: legacy dates"],
            {"type": "invalid_date", "action": "ignore", "note": "accepted: legacy dates"},
        ),
        (
            ["--type", "duplicate_key", "--severity", "warning", "--action", "resolve", "--note", "merged"],
            {"type": "duplicate_key", "severity": "warning", "action": "resolve", "note": "merged"},
        ),
    ]
    with twins.server.client(twins.key) as client:
        before = client.get("/issues", params={"grouped": "true"}).json()
        assert before["total"] == 30 and {g["type"] for g in before["groups"]} >= {"invalid_zip_code", "invalid_date"}
        listed = client.get("/issues", params={"severity": "error", "field": "home_office_zip", "partition": Q3})
        capsys.readouterr()
        assert main(["dq", "list", "--format", "json", "--severity", "error", "--field", "home_office_zip"]) == 0
        from_cli = json.loads(capsys.readouterr().out)
        assert listed.json()["total"] == from_cli["total"] == 4
        for cli_args, body in actions:
            assert main(["dq", "resolve", *cli_args]) == 0
            said = capsys.readouterr().out.strip()
            answer = client.post("/issues/actions", json=body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["message"] == said and answer.json()["by"] == "steward-bot"
        # One issue by its id: a corrected value, kept as a rule.
        assert (
            main(
                [
                    "dq",
                    "resolve",
                    "--id",
                    first_pending(twins.cli, "invalid_zip_code"),
                    "--action",
                    "manual_fix",
                    "--map-to",
                    "12345",
                ]
            )
            == 0
        )
        said = capsys.readouterr().out.strip()
        body = {
            "ids": [first_pending(twins.api, "invalid_zip_code")],
            "action": "manual_fix",
            "fix": {"map_to": "12345"},
        }
        assert client.post("/issues/actions", json=body).json()["message"] == said
        refused = client.post("/issues/actions", json={"action": "resolve"})
        assert refused.status_code == 400 and "ids or type" in refused.json()["detail"]
        unknown = client.post("/issues/actions", json={"action": "delete", "type": "invalid_date"})
        assert unknown.status_code == 422
        issue_id = client.get("/issues", params={"status": "all", "limit": 1}).json()["issues"][0]["issue_id"]
        record = client.get(f"/issues/{issue_id}").json()
        assert record["issue"]["issue_id"] == issue_id and record["origin"]
    assert triage_state(twins.api) == triage_state(twins.cli)
    by = twins.api.query(
        "SELECT DISTINCT resolved_by FROM {schema}.data_quality_issues WHERE resolution_status <> 'pending'"
    )
    assert by == [("steward-bot",)], "every change is recorded as the key's"
    assert twins.cli.query(
        "SELECT DISTINCT resolved_by FROM {schema}.data_quality_issues WHERE resolution_status <> 'pending'"
    ) == [(getpass.getuser(),)]


@pytest.mark.parametrize("decision", ["release", "discard"])
def test_a_held_version_released_or_discarded_over_http_ends_as_from_the_cli(
    twins, decision, landing, tmp_path, capsys
):
    spec = twins.specs[SOURCE]
    for store in (twins.cli, twins.api):
        folder = land(tmp_path, spec, HELD_FILE, crafted_file())
        load_file(spec, folder, HELD_FILE, store, tmp_path / "s", "held")
    held_id = twins.cli.query("SELECT source_id FROM {schema}.sources WHERE status = 'held'")[0][0]
    assert twins.api.query("SELECT source_id FROM {schema}.sources WHERE status = 'held'")[0][0] == held_id
    with twins.server.client(twins.key) as client:
        listed = client.get("/held").json()
        assert [v["source_id"] for v in listed] == [held_id] and listed[0]["held_because"]
        shown = client.get(f"/held/{held_id}").json()
        assert shown["failed_checks"] and shown["total"] == len(shown["changes"]) > 0
        status = client.get(f"/versions/{held_id}").json()
        assert status["state"] == "held" and "blocking check(s) failed" in status["reason"]
        staged = client.get(f"/versions/{held_id}/rows").text.splitlines()
        assert len(staged) == 1 + 4, "a held version's rows are its staged rows"
        assert client.post(f"/held/{held_id}/{decision}", json={}).status_code == 422, "a decision needs a reason"
        answer = client.post(f"/held/{held_id}/{decision}", json={"reason": REASON})
        assert answer.status_code == 200, answer.text
        again = client.post(f"/held/{held_id}/{decision}", json={"reason": REASON})
        assert again.status_code == 409 and "not held" in again.json()["detail"]
    assert main(["held", decision, str(held_id), "--reason", REASON, "--by", "steward-bot"]) == 0
    for query in (
        "SELECT source_id, status, records_imported, records_inserted, records_updated FROM {schema}.sources "
        "ORDER BY source_id",
        "SELECT source_id, partition_key, decision, decided_by, reason FROM {schema}.version_decisions",
        f"SELECT corp_number, home_office_city, _file_hash FROM {{schema}}.{SOURCE} ORDER BY corp_number",
    ):
        assert twins.api.query(query) == twins.cli.query(query), query
    assert registry_rows(twins.api, spec) == registry_rows(twins.cli, spec)
