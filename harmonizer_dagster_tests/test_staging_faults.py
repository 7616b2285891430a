"""Faults of the staging disk and of downloads: a full disk fails naming the staging folder, and
neither it nor a download cut mid-way leaves files behind, on every warehouse."""

import socket
import socketserver
import subprocess
import threading
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import IncompleteReadError

from harmonizer_dagster.core.files import FileVersion
from harmonizer_dagster.core.pipeline import hash_step
from harmonizer_dagster.core.staging import StagingFull
from harmonizer_dagster_tests.conftest import load_file
from harmonizer_dagster_tests.test_bad_input import FILE, HEADER, SOURCE, spec_for

ROWS = 40_000
DATA = HEADER + b"".join(b"%d,name %d,city\n" % (i, i) for i in range(ROWS))


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB file system (tmpfs) for the staging folder."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def full_disk_message(folder) -> str:
    return (
        f"[Errno 28] no space left on the disk of the staging folder {folder}: free space there or set "
        "HARMONIZER_STAGING_DIR to a folder on a larger disk, then run the load again "
        "(what the load had staged there was removed)"
    )


def test_a_full_staging_disk_fails_naming_the_folder_and_keeps_nothing_there(warehouse, tmp_path, small_disk):
    landing = tmp_path / "landing"
    (landing / SOURCE).mkdir(parents=True)
    (landing / SOURCE / FILE).write_bytes(DATA)
    with pytest.raises(StagingFull) as raised:
        load_file(spec_for(), landing, FILE, warehouse, small_disk)
    assert str(raised.value) == full_disk_message(small_disk)
    assert files_under(small_disk) == []
    load_file(spec_for(), landing, FILE, warehouse, tmp_path / "larger")
    assert warehouse.partition_counts(SOURCE, FILE)["records_imported"] == ROWS
    assert files_under(tmp_path / "larger") == [] and files_under(small_disk) == []


class CuttingProxy(socketserver.ThreadingTCPServer):
    """Relays connections to an S3 endpoint and cuts each response after `limit` bytes: a
    download whose connection is lost mid-way."""

    daemon_threads = True

    def __init__(self, upstream: tuple[str, int], limit: int):
        self.upstream, self.limit = upstream, limit
        super().__init__(("127.0.0.1", 0), _Relay)

    @property
    def endpoint(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _Relay(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: CuttingProxy = self.server  # type: ignore[assignment]
        upstream = socket.create_connection(server.upstream)
        threading.Thread(target=_pipe, args=(self.request, upstream), daemon=True).start()
        relayed = 0
        while relayed < server.limit and (data := upstream.recv(65536)):
            self.request.sendall(data[: server.limit - relayed])
            relayed += len(data)
        upstream.close()
        self.request.shutdown(socket.SHUT_RDWR)


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass


@pytest.fixture
def landed_object(s3_bucket):
    bucket, client = s3_bucket
    client.put_object(Bucket=bucket, Key=FILE, Body=DATA)
    uri = f"s3://{bucket}/{FILE}"
    return FileVersion(SOURCE, uri, uri), client


def test_a_download_cut_mid_way_leaves_no_partial_file(warehouse, tmp_path, landed_object, s3_endpoint):
    file, client = landed_object
    host, port = s3_endpoint.removeprefix("http://").split(":")
    with CuttingProxy((host, int(port)), limit=len(DATA) // 3) as proxy:
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        cut = boto3.client("s3", endpoint_url=proxy.endpoint, region_name="us-east-1")
        with pytest.raises(IncompleteReadError, match="read, but total bytes expected is"):
            hash_step(spec_for(), file, warehouse, tmp_path / "staging", "run", s3_client=cut)
        proxy.shutdown()
    assert files_under(tmp_path / "staging") == []
    hashed = hash_step(spec_for(), file, warehouse, tmp_path / "staging", "run", s3_client=client)
    assert files_under(tmp_path / "staging") == [str(Path(hashed.path).relative_to(tmp_path / "staging"))]


def test_a_download_filling_the_staging_disk_fails_naming_it_and_keeps_nothing(warehouse, small_disk, landed_object):
    file, client = landed_object
    with pytest.raises(StagingFull) as raised:
        hash_step(spec_for(), file, warehouse, small_disk, "run", s3_client=client)
    assert str(raised.value) == full_disk_message(small_disk)
    assert files_under(small_disk) == []
