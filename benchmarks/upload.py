"""Handing a file in over HTTP, beside the floor of moving the same bytes without the API.

    python benchmarks/upload.py --mb 500 --repeat 3

local  `curl -T FILE` to PUT /api/v1/sources/business_registry/files/NAME of `harmonizer dq serve`
       on loopback, landing in a temporary folder; the floor: a bare copy of the same file into
       the same folder (shutil.copyfile).
s3     the same PUT with the server landing files in a moto S3 server (its own process, on
       loopback); the floor: a plain boto3 upload (upload_file, its default multipart settings)
       of the same file to the same endpoint.

Prints the best of --repeat runs of each in MB/s, the ratio to its floor and the server's peak
RSS growth. Target: the API within 1.5x of each floor. The local line also gives the SHA-256 of
the file alone (hashlib), which every upload computes and the bare copy does not.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).parent.parent
sys.path.insert(0, str(REPO))
SOURCE = "business_registry"
BUCKET = "landing"
S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def sample_file(path: Path, size: int) -> None:
    """A CSV of the source's sample lines, `size` bytes or a little more."""
    sample = REPO / "harmonizer_dagster" / "samples" / SOURCE / "registry_2026-Q3.csv"
    block = sample.read_bytes()
    with path.open("wb") as out:
        while out.tell() < size:
            out.write(block)


def best(repeat: int, run) -> float:
    """The fastest of `repeat` runs, in seconds."""
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return min(timings)


def curl_put(url: str, key: str, path: Path) -> None:
    subprocess.run(
        [
            "curl",
            "-sS",
            "--fail",
            "-o",
            "/dev/null",
            "-H",
            f"Authorization: Bearer {key}",
            "-H",
            "Expect:",
            "-T",
            str(path),
            url,
        ],
        check=True,
    )


def report(what: str, size: int, api: float, floor: float, floor_name: str, growth: int) -> None:
    mb = size / 1e6
    print(
        f"{what:<6} API {mb / api:7.0f} MB/s ({api:.2f} s)   {floor_name} {mb / floor:7.0f} MB/s ({floor:.2f} s)   "
        f"ratio {api / floor:.2f}   server peak RSS +{growth >> 20} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=500, help="file size in MiB (default 500)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("local", "s3"))
    args = parser.parse_args()

    import boto3

    from harmonizer_dagster.core.api_keys import create_key
    from harmonizer_dagster.core.warehouse import open_warehouse
    from harmonizer_dagster_tests.api_server import spawn, start_server, stop, stop_server
    from harmonizer_dagster_tests.fleet import answers, free_port, wait_for

    with tempfile.TemporaryDirectory(prefix="upload-bench-") as root_name:
        root = Path(root_name)
        source_file = root / "file.csv"
        sample_file(source_file, args.mb << 20)
        size = source_file.stat().st_size
        drop = root / "drop"
        (drop / SOURCE).mkdir(parents=True)
        url = f"duckdb:///{root / 'warehouse.duckdb'}"
        store = open_warehouse(url)
        store.migrate([])
        key = create_key(store, "bench", ["upload"])
        env = {**os.environ, "HARMONIZER_WAREHOUSE_URL": url, "HARMONIZER_LANDING_DIR": str(drop)}
        print(f"{size / 1e6:.0f} MB file, best of {args.repeat}")

        if args.only in (None, "local"):
            server = start_server(env, root / "api.log")
            try:
                put = f"{server.base}/sources/{SOURCE}/files/uploaded.csv"
                idle = server.memory("VmHWM")
                api = best(args.repeat, lambda: curl_put(put, key, source_file))
                growth = server.memory("VmHWM") - idle
            finally:
                stop_server(server)
            assert (drop / SOURCE / "uploaded.csv").stat().st_size == size
            floor = best(args.repeat, lambda: shutil.copyfile(source_file, drop / SOURCE / "copied.csv"))
            report("local", size, api, floor, "bare copy", growth)
            hashing = best(args.repeat, lambda: hashlib.file_digest(source_file.open("rb"), "sha256"))
            print(f"       SHA-256 of the file alone {size / 1e6 / hashing:7.0f} MB/s ({hashing:.2f} s)")

        if args.only in (None, "s3"):
            port = free_port()
            moto = spawn(
                [str(Path(sys.executable).parent / "moto_server"), "-p", str(port)],
                {**os.environ, **S3_ENV},
                root / "moto.log",
            )
            endpoint = f"http://127.0.0.1:{port}"
            try:
                wait_for(lambda: answers(f"{endpoint}/moto-api/"), 30, "moto to answer")
                client = boto3.client(
                    "s3",
                    endpoint_url=endpoint,
                    **{"aws_access_key_id": "bench", "aws_secret_access_key": "bench", "region_name": "us-east-1"},
                )
                client.create_bucket(Bucket=BUCKET)
                s3_env = {**env, **S3_ENV, "HARMONIZER_S3_BUCKET": BUCKET, "HARMONIZER_S3_ENDPOINT_URL": endpoint}
                server = start_server(s3_env, root / "api-s3.log")
                try:
                    put = f"{server.base}/sources/{SOURCE}/files/uploaded.csv"
                    idle = server.memory("VmHWM")
                    api = best(args.repeat, lambda: curl_put(put, key, source_file))
                    growth = server.memory("VmHWM") - idle
                finally:
                    stop_server(server)
                head = client.head_object(Bucket=BUCKET, Key=f"{SOURCE}/uploaded.csv")
                assert head["ContentLength"] == size
                floor = best(args.repeat, lambda: client.upload_file(str(source_file), BUCKET, f"{SOURCE}/plain.csv"))
                report("s3", size, api, floor, "boto3 upload", growth)
            finally:
                stop(moto)


if __name__ == "__main__":
    main()
