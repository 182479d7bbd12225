"""Spark Connect overhead: the orders job and TPC-H q1, q3, q18 written as PySpark
DataFrame code, run through Spark Connect, next to the same query submitted as an
Ignis job (POST /v1/jobs) to the same `ignis serve`, interleaved, in one run.

    cargo build --release -p ignis-driver
    ~/.cache/ignis/venv/bin/pip install pyspark-client==4.2.0 "pandas<3" tpchgen-cli
    ~/.cache/ignis/venv/bin/python bench/connect/bench.py --scale 1

Writes bench/results/connect-results.md and .json: median milliseconds per
workload and the ratio Connect / job (the overhead of the front end: planning
from the protocol, Arrow batches back to Python).
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEY = "bench-key-0001"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate(data: Path, scale: float, ignis: str):
    tpch = data / f"tpch-sf{scale:g}"
    if not (tpch / "lineitem").exists():
        tpch.mkdir(parents=True, exist_ok=True)
        gen = Path(sys.executable).with_name("tpchgen-cli")
        subprocess.run([str(gen), "parquet", "-s", str(scale), "--parts", "4", "--output-dir", str(tpch)], check=True)
    rows = int(1_000_000 * scale)
    orders = data / f"orders-{rows}"
    if not (orders / "orders-3.csv").exists():
        subprocess.run([ignis, "gen-orders", "--out", str(orders), "--rows", str(rows), "--files", "4"], check=True)
    return tpch, orders


def http(base, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r) if r.headers.get("content-type", "").startswith("application/json") else r.read()


def run_job(base, job):
    start = time.perf_counter()
    submitted = http(base, "POST", "/v1/jobs", job)
    while True:
        status = http(base, "GET", f"/v1/jobs/{submitted['id']}")
        if status["state"] not in ("running", "queued"):
            break
        time.sleep(0.005)
    if status["state"] != "succeeded":
        raise RuntimeError(f"job failed: {status.get('error')}")
    rows = None
    if job["output"] == "collect":
        rows = http(base, "GET", f"/v1/jobs/{submitted['id']}/result")["rows"]
    return (time.perf_counter() - start) * 1000, rows


def same_rows(connect_rows, job_rows):
    """Both answers, compared as text with numbers rounded (JSON and Python print them differently)."""
    def norm(v):
        try:
            return f"{float(v):.4f}"
        except (TypeError, ValueError):
            return str(v)
    a = sorted(sorted((k, norm(v)) for k, v in r.asDict().items()) for r in connect_rows)
    b = sorted(sorted((k, norm(v)) for k, v in r.items()) for r in job_rows)
    return a == b


def tables(tpch: Path, orders: Path):
    t = {name: {"format": "parquet", "location": (tpch / name).as_uri() + "/"} for name in
         ["lineitem", "orders", "customer"]}
    t["orders_csv"] = {"format": "csv", "location": orders.as_uri() + "/",
                       "options": {"header": True, "schema": "order_id BIGINT, country STRING, product STRING, quantity INT, price DOUBLE, ts TIMESTAMP"}}
    return t


def workloads(spark, tpch: Path, orders: Path, out: Path):
    from pyspark.sql import functions as F

    lineitem = lambda: spark.read.parquet(str(tpch / "lineitem"))  # noqa: E731
    orders_t = lambda: spark.read.parquet(str(tpch / "orders"))  # noqa: E731
    customer = lambda: spark.read.parquet(str(tpch / "customer"))  # noqa: E731

    def q1():
        return (lineitem().filter(F.col("l_shipdate") <= F.lit("1998-09-02").cast("date"))
                .groupBy("l_returnflag", "l_linestatus")
                .agg(F.sum("l_quantity").alias("sum_qty"), F.sum("l_extendedprice").alias("sum_base_price"),
                     F.sum(F.col("l_extendedprice") * (1 - F.col("l_discount"))).alias("sum_disc_price"),
                     F.sum(F.col("l_extendedprice") * (1 - F.col("l_discount")) * (1 + F.col("l_tax"))).alias("sum_charge"),
                     F.avg("l_quantity").alias("avg_qty"), F.avg("l_extendedprice").alias("avg_price"),
                     F.avg("l_discount").alias("avg_disc"), F.count("*").alias("count_order"))
                .orderBy("l_returnflag", "l_linestatus")).collect()

    def q3():
        c = customer().filter(F.col("c_mktsegment") == "BUILDING")
        o = orders_t().filter(F.col("o_orderdate") < F.lit("1995-03-15").cast("date"))
        li = lineitem().filter(F.col("l_shipdate") > F.lit("1995-03-15").cast("date"))
        return (c.join(o, c.c_custkey == o.o_custkey).join(li, F.col("l_orderkey") == F.col("o_orderkey"))
                .groupBy("l_orderkey", "o_orderdate", "o_shippriority")
                .agg(F.sum(F.col("l_extendedprice") * (1 - F.col("l_discount"))).alias("revenue"))
                .orderBy(F.desc("revenue"), "o_orderdate", "l_orderkey").limit(10)).collect()

    def q18():
        big = lineitem().groupBy("l_orderkey").agg(F.sum("l_quantity").alias("q")).filter("q > 300").select(F.col("l_orderkey").alias("big_key"))
        o = orders_t().join(big, F.col("o_orderkey") == F.col("big_key"), "left_semi")
        return (customer().join(o, F.col("c_custkey") == F.col("o_custkey"))
                .join(lineitem(), F.col("o_orderkey") == F.col("l_orderkey"))
                .groupBy("c_name", "c_custkey", "o_orderkey", "o_orderdate", "o_totalprice")
                .agg(F.sum("l_quantity").alias("total_qty"))
                .orderBy(F.desc("o_totalprice"), "o_orderdate", "o_orderkey").limit(100)).collect()

    def orders_job():
        df = spark.read.schema("order_id BIGINT, country STRING, product STRING, quantity INT, price DOUBLE, ts TIMESTAMP") \
            .option("header", True).csv(str(orders))
        (df.filter(df.country == "US").groupBy("product")
         .agg(F.count("*").alias("orders"), F.sum("quantity").alias("units"),
              F.round(F.sum(F.col("price") * F.col("quantity")), 2).alias("revenue"))
         .write.mode("overwrite").parquet(str(out / "connect")))

    sql = {name: (ROOT / "tests" / "tpch" / "queries" / f"{name}.sql").read_text() for name in ["q1", "q3", "q18"]}
    orders_sql = ("SELECT product, count(*) AS orders, sum(quantity) AS units, round(sum(price * quantity), 2) AS revenue "
                  "FROM orders_csv WHERE country = 'US' GROUP BY product")
    write = {"write": {"format": "parquet", "location": (out / "job").as_uri() + "/", "mode": "overwrite"}}
    return [
        ("q1", q1, sql["q1"], "collect"),
        ("q3", q3, sql["q3"], "collect"),
        ("q18", q18, sql["q18"], "collect"),
        ("orders", orders_job, orders_sql, write),
    ]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--data", type=Path, default=ROOT / "bench" / "data")
    target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/ignis/target"))
    parser.add_argument("--ignis", default=str(target / "release" / "ignis"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    args.data.mkdir(parents=True, exist_ok=True)
    data = args.data.resolve()
    tpch, orders = generate(data, args.scale, args.ignis)
    http_port, grpc_port = free_port(), free_port()
    server = subprocess.Popen([args.ignis, "serve", "--listen", f"127.0.0.1:{http_port}", "--local-executors", "2",
                               "--api-keys", f"bench:{KEY}", "--allow-local-files", str(data),
                               "--shuffle-root", (data / "_shuffle").as_uri(), "--spark-connect", f"127.0.0.1:{grpc_port}"],
                              stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{http_port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(base + "/healthz")
                break
            except OSError:
                time.sleep(0.2)
        from pyspark.sql import SparkSession

        spark = SparkSession.builder.remote(f"sc://127.0.0.1:{grpc_port}/;x-api-key={KEY}").getOrCreate()
        out = data / "_connect_out"
        rows = []
        for name, connect_fn, sql, output in workloads(spark, tpch, orders, out):
            job = {"name": f"bench {name}", "tables": tables(tpch, orders), "sql": sql, "output": output}
            connect_ms, job_ms = [], []
            connect_answer = job_answer = None
            for i in range(args.reps + 1):
                order = ["connect", "job"] if i % 2 == 0 else ["job", "connect"]
                for engine in order:
                    start = time.perf_counter()
                    if engine == "connect":
                        answer = connect_fn()
                        elapsed = (time.perf_counter() - start) * 1000
                        if i == 0 and answer is not None:
                            connect_answer = answer
                    else:
                        elapsed, job_answer = run_job(base, job)
                    if i == 0 and engine == order[1] and output == "collect" and not same_rows(connect_answer, job_answer):
                        print(f"{name}: Spark Connect and the job answered differently:", file=sys.stderr)
                        print(connect_answer[:3], job_answer[:3], sep="\n", file=sys.stderr)
                        os._exit(1)
                    if i > 0:  # the first round warms caches
                        (connect_ms if engine == "connect" else job_ms).append(elapsed)
            c, j = statistics.median(connect_ms), statistics.median(job_ms)
            rows.append({"workload": name, "connect_ms": round(c, 1), "job_ms": round(j, 1), "ratio": round(c / j, 3)})
            print(f"{name:<8} connect {c:>9.1f} ms  job {j:>9.1f} ms  ratio {c / j:.3f}", flush=True)
        spark.stop()
    finally:
        server.terminate()
        server.wait(10)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"scale": args.scale, "reps": args.reps, "binary": args.ignis, "date": time.strftime("%Y-%m-%d")}
    (args.out / "connect-results.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    lines = [f"# Spark Connect vs Ignis job (scale {args.scale:g}, median of {args.reps}, {meta['date']})", "",
             f"Binary: `{Path(args.ignis).name}` ({'release' if '/release/' in args.ignis else 'debug'} build).", "",
             "| workload | Spark Connect ms | Ignis job ms | Connect / job |", "|---|---:|---:|---:|"]
    lines += [f"| {r['workload']} | {r['connect_ms']} | {r['job_ms']} | {r['ratio']} |" for r in rows]
    total_c = sum(r["connect_ms"] for r in rows)
    total_j = sum(r["job_ms"] for r in rows)
    lines += [f"| total | {total_c:.1f} | {total_j:.1f} | {total_c / total_j:.3f} |", ""]
    (args.out / "connect-results.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
