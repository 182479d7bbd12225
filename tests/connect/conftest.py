"""Fixtures of the Spark Connect suite: a real `ignis serve --spark-connect`
(the binary in $IGNIS_BIN), moto as S3 on loopback, test data on disk and in
S3, and pyspark sessions of two tenants."""

import json
import os
import random
import subprocess
import sys
import urllib.request
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from procs import free_port, moto_server, port_open, s3_client, scratch_dir, wait_for  # noqa: E402

ALICE_KEY = "alice-connect-key"
BOB_KEY = "bob-connect-key"


@pytest.fixture(scope="session")
def workdir():
    yield from scratch_dir("ignis-connect-")


@pytest.fixture(scope="session")
def moto(workdir):
    yield from moto_server(workdir, ["sales-data", "bob-data", "ignis"])


def make_orders(n=600, seed=7):
    rng = random.Random(seed)
    countries = ["US", "FR", "DE", "JP", "BR"]
    products = ["kettle", "toaster", "mixer", "blender", "grill", "fan"]
    rows = []
    for i in range(1, n + 1):
        rows.append(
            {
                "order_id": i,
                "customer_id": rng.randint(1, 40),
                "country": rng.choice(countries),
                "product": rng.choice(products),
                "amount": round(rng.uniform(5, 500), 2),
                "quantity": rng.randint(1, 9),
                "order_date": date(2026, 1, 1) + timedelta(days=rng.randint(0, 330)),
                "note": rng.choice(["gift", "rush", None, None, "  padded  "]),
            }
        )
    return rows


def make_customers(n=45, seed=11):
    rng = random.Random(seed)
    segments = ["retail", "business", "vip"]
    return [{"customer_id": i, "name": f"customer-{i:02d}", "segment": rng.choice(segments)} for i in range(1, n + 1)]


@pytest.fixture(scope="session")
def data(workdir):
    """Test tables as Parquet files under alice's directory (two files each)."""
    root = workdir / "files" / "alice"
    tables = {"orders": make_orders(), "customers": make_customers()}
    paths = {}
    for name, rows in tables.items():
        d = root / name
        d.mkdir(parents=True)
        t = pa.Table.from_pylist(rows)
        half = t.num_rows // 2
        pq.write_table(t.slice(0, half), d / "part-0.parquet")
        pq.write_table(t.slice(half), d / "part-1.parquet")
        paths[name] = str(d)
    csv = root / "orders.csv"
    with open(csv, "w") as f:
        f.write("order_id,country,product,amount\n")
        for r in tables["orders"][:50]:
            f.write(f"{r['order_id']},{r['country']},{r['product']},{r['amount']}\n")
    paths["orders_csv"] = str(csv)
    paths["root"] = str(root)
    paths["bob_root"] = str(workdir / "files" / "bob")
    (workdir / "files" / "bob").mkdir(parents=True)
    return paths


@pytest.fixture(scope="session")
def ignis(workdir, moto, data):
    """`ignis serve` with Spark Connect: tenants alice and bob, local files
    under files/{tenant}, S3 grants s3://sales-data/ (alice) and s3://bob-data/ (bob)."""
    binary = os.environ.get("IGNIS_BIN")
    assert binary, "set IGNIS_BIN to the ignis binary (scripts/test does)"
    tenants = workdir / "tenants.toml"
    tenants.write_text(
        f"""
[tenants.alice]
keys = ["{ALICE_KEY}"]
prefixes = ["s3://sales-data/"]

[tenants.bob]
keys = ["{BOB_KEY}"]
prefixes = ["s3://bob-data/"]
"""
    )
    http, grpc = free_port(), free_port()
    env = dict(os.environ)
    env.update(
        {
            "AWS_ENDPOINT_URL_S3": moto,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "RUST_LOG": "warn",
        }
    )
    log = open(workdir / "ignis.log", "w")
    proc = subprocess.Popen(
        [
            binary,
            "serve",
            "--listen",
            f"127.0.0.1:{http}",
            "--spark-connect",
            f"127.0.0.1:{grpc}",
            "--local-executors",
            "2",
            "--api-keys-file",
            str(tenants),
            "--allow-local-files",
            str(workdir / "files" / "{tenant}"),
            "--shuffle-root",
            "s3://ignis/shuffle/",
            "--udf-root",
            "s3://ignis/udfs/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    wait_for(lambda: port_open(grpc) and port_open(http), "ignis serve")
    yield {"http": f"http://127.0.0.1:{http}", "grpc": grpc, "log": workdir / "ignis.log"}
    proc.terminate()
    proc.wait(10)


def connect(ignis, key, session_id=None):
    from pyspark.sql import SparkSession

    url = f"sc://127.0.0.1:{ignis['grpc']}/;x-api-key={key}"
    if session_id:
        url += f";session_id={session_id}"
    return SparkSession.builder.remote(url).create()


@pytest.fixture(scope="session")
def spark(ignis):
    session = connect(ignis, ALICE_KEY)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def bob(ignis):
    session = connect(ignis, BOB_KEY)
    yield session
    session.stop()


def jobs(ignis, key):
    """The tenant's jobs as GET /v1/jobs lists them, newest first."""
    req = urllib.request.Request(f"{ignis['http']}/v1/jobs", headers={"Authorization": f"Bearer {key}"})
    return json.load(urllib.request.urlopen(req))["jobs"]
