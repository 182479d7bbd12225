"""What the Python suites (tests/connect, tests/stream) share: free loopback
ports, waiting for a condition, and moto (S3) as a process on loopback."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def port_open(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def scratch_dir(prefix):
    """A directory for one session's files (a generator for a fixture)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def moto_server(workdir, buckets):
    """moto ($IGNIS_MOTO_SERVER) on a free port with `buckets` made; yields
    its endpoint URL (a generator for a fixture)."""
    server = os.environ.get("IGNIS_MOTO_SERVER", "moto_server")
    port = free_port()
    log = open(workdir / "moto.log", "w")
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    wait_for(lambda: port_open(port), "moto")
    for bucket in buckets:
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")).read()
    yield endpoint
    proc.terminate()
    proc.wait(10)


def s3_client(endpoint):
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
