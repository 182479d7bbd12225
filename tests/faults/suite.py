"""Ignis's fault suite: real processes on 127.0.0.1 (moto, `ignis serve`, three
`ignis executor` hosts) under faults, each case's figures printed as a table.

- proxy: a TCP fault proxy in front of moto cuts 5% of connections at a random
  byte and holds 2% for 2 s; the orders job and TPC-H q5, q9, q18 (SF0.1) must
  give what a clean run gives.
- kill: the driver is killed with SIGKILL at ten points of a TPC-H q9 job
  writing Parquet (during stages, as a stage completes, during the commit) and
  started again with the same journal: the output must equal a clean run's, with
  no file twice, no staging left, and fewer attempts than a full re-run.
- slow: one host 20x slower (the hosts' hidden task-delay knob), with and
  without speculation, against the time with no slow host.
- stuck: a host that takes tasks and never answers (but heartbeats); the job
  must succeed after the task deadline.

Run by scripts/faults, which builds the binaries and the data first.
"""

import argparse
import asyncio
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request

import boto3
import pyarrow.parquet as pq

BUCKET = "ignis-faults"
KEY = "faults-key-0001"
SECRET = "faults-secret-0002"
TABLES = ["customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, timeout=120.0, every=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(every)


class FaultProxy:
    """TCP proxy to `target`: a share `cut` of connections is aborted at a
    random byte (both directions counted), a share `delay` held `delay_s`
    before it is forwarded. Faults apply only while `armed`."""

    def __init__(self, target: int, cut: float, delay: float, delay_s: float, seed: int):
        self.target, self.cut, self.delay, self.delay_s = target, cut, delay, delay_s
        self.rng = random.Random(seed)
        self.armed = False
        self.port = free_port()
        self.counts = {"connections": 0, "cut": 0, "delayed": 0}
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait()

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        ready.set()
        self.loop.run_until_complete(server.serve_forever())

    async def _handle(self, client_r, client_w):
        self.counts["connections"] += 1
        cut_at = None
        if self.armed:
            roll = self.rng.random()
            if roll < self.cut:
                self.counts["cut"] += 1
                cut_at = self.rng.randint(0, 32 * 1024)
            elif roll < self.cut + self.delay:
                self.counts["delayed"] += 1
                await asyncio.sleep(self.delay_s)
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            client_w.transport.abort()
            return
        budget = [cut_at]

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    if budget[0] is not None:
                        if len(data) >= budget[0]:
                            dst.write(data[: budget[0]])
                            client_w.transport.abort()
                            up_w.transport.abort()
                            return
                        budget[0] -= len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))


class Cluster:
    """moto behind the fault proxy, a driver with a journal, executor hosts."""

    def __init__(self, ignis: str, logs: str, proxy: FaultProxy):
        self.ignis, self.logs, self.proxy = ignis, logs, proxy
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.driver = None
        self.hosts = {}
        self.env = dict(
            os.environ,
            AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{proxy.port}",
            AWS_REGION="us-east-1",
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            IGNIS_EXECUTOR_SECRET=SECRET,
            IGNIS_API_KEYS=f"faults:{KEY}",
            IGNIS_LOG="info",
        )

    def _spawn(self, name, args, extra_env=None):
        log = open(os.path.join(self.logs, f"{name}.log"), "ab")
        env = dict(self.env, **(extra_env or {}))
        return subprocess.Popen([self.ignis, *args], env=env, stdout=subprocess.DEVNULL, stderr=log)

    def start_driver(self, extra_env=None, name="driver"):
        args = [
            "serve", "--listen", f"127.0.0.1:{self.port}",
            "--shuffle-root", f"s3://{BUCKET}/_shuffle",
            "--journal", f"s3://{BUCKET}/_journal/",
            "--executor-timeout", "3", "--heartbeat-interval", "0.3",
        ]  # fmt: skip
        self.driver = self._spawn(name, args, extra_env)
        wait_for("the driver", lambda: self._healthy())

    def _healthy(self):
        try:
            with urllib.request.urlopen(f"{self.base}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def kill_driver(self):
        self.driver.send_signal(signal.SIGKILL)
        self.driver.wait()

    def start_host(self, name, delay_ms=0, slots=1):
        args = ["executor", "--driver", self.base, "--slots", str(slots), "--name", name]
        self.hosts[name] = self._spawn(name, args, {"IGNIS_TEST_TASK_DELAY_MS": str(delay_ms)})

    def stop_host(self, name):
        self.hosts.pop(name).kill()

    def wait_hosts(self, n):
        wait_for(f"{n} hosts", lambda: len(self.request("GET", "/v1/executors")[1].get("executors", [])) == n)

    def stop(self):
        for p in [self.driver, *self.hosts.values()]:
            if p and p.poll() is None:
                p.kill()
                p.wait()
        self.hosts.clear()

    def request(self, method, path, body=None, accept="application/json"):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.base}{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {KEY}")
        req.add_header("Accept", accept)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def submit(self, job):
        code, body = self.request("POST", "/v1/jobs", job)
        if code != 202:
            raise RuntimeError(f"submit answered {code}: {body}")
        return body["id"]

    def status(self, job_id):
        try:
            return self.request("GET", f"/v1/jobs/{job_id}")[1]
        except OSError:
            return {}

    def wait(self, job_id, timeout=600):
        return wait_for(
            f"job {job_id}",
            lambda: (s := self.status(job_id)).get("state") not in (None, "running", "queued") and s,
            timeout=timeout,
            every=0.1,
        )

    def rows(self, job_id):
        code, body = self.request("GET", f"/v1/jobs/{job_id}/result")
        if code != 200:
            raise RuntimeError(f"result answered {code}: {body}")
        return sorted(json.dumps(r, sort_keys=True) for r in body["rows"])


def s3_client(endpoint):
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )


def keys(s3, prefix):
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def written_rows(s3, prefix):
    rows = []
    for key in keys(s3, prefix):
        if key.endswith(".parquet") and "/_" not in key[len(prefix) :]:
            body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            rows += [json.dumps(r, sort_keys=True, default=str) for r in pq.read_table(io.BytesIO(body)).to_pylist()]
    return sorted(rows)


def tpch_job(repo, query, output=None):
    sql = open(os.path.join(repo, "tests/tpch/queries", f"{query}.sql")).read()
    tables = {t: {"format": "parquet", "location": f"s3://{BUCKET}/tpch/{t}/"} for t in TABLES}
    job = {"name": query, "sql": sql, "tables": tables, "config": {"shuffle_partitions": 4}}
    if output:
        job["output"] = {"write": {"format": "parquet", "location": output, "mode": "overwrite"}}
    return job


def orders_job(repo, output):
    job = tomllib.load(open(os.path.join(repo, "examples/orders/job.toml"), "rb"))
    job["tables"]["orders"]["location"] = f"s3://{BUCKET}/orders/"
    job["output"]["write"]["location"] = output
    return job


def task_attempts(status):
    return status["metrics"]["task_attempts"]


def tasks_of(status):
    return sum(s["tasks"] for s in status["stages"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ignis", required=True)
    ap.add_argument("--moto", required=True)
    ap.add_argument("--tpch", required=True, help="TPC-H SF0.1 as Parquet, a folder per table")
    ap.add_argument("--repo", required=True)
    ap.add_argument("--only", default="proxy,kill,slow,stuck")
    args = ap.parse_args()
    cases = args.only.split(",")
    logs = tempfile.mkdtemp(prefix="ignis-faults-")
    moto_port = free_port()
    moto = subprocess.Popen(
        [args.moto, "-H", "127.0.0.1", "-p", str(moto_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    proxy = FaultProxy(moto_port, cut=0.05, delay=0.02, delay_s=2.0, seed=7)
    s3 = s3_client(f"http://127.0.0.1:{moto_port}")
    wait_for("moto", lambda: _try(lambda: s3.create_bucket(Bucket=BUCKET)))
    for table in TABLES:
        folder = os.path.join(args.tpch, table)
        for name in os.listdir(folder):
            s3.upload_file(os.path.join(folder, name), BUCKET, f"tpch/{table}/{name}")
    data = os.path.join(args.repo, "examples/orders/data")
    for name in os.listdir(data):
        s3.upload_file(os.path.join(data, name), BUCKET, f"orders/{name}")

    figures = []
    cluster = Cluster(args.ignis, logs, proxy)
    try:
        if "proxy" in cases:
            figures += proxy_case(cluster, s3, args.repo)
        if "kill" in cases:
            figures += kill_case(cluster, s3, args.repo)
        if "slow" in cases:
            figures += slow_case(cluster, args.repo)
        if "stuck" in cases:
            figures += stuck_case(cluster, args.repo)
    finally:
        cluster.stop()
        moto.kill()
    print()
    print("| case | result | attempts / tasks | speculative (wins) | hedged reads (wins) | time s | notes |")
    print("|---|---|---:|---:|---:|---:|---|")
    failed = False
    for f in figures:
        failed |= not f["ok"]
        print(
            f"| {f['case']} | {'ok' if f['ok'] else 'FAILED'} | {f.get('attempts', '')} | {f.get('speculative', '')} "
            f"| {f.get('hedged', '')} | {f.get('seconds', 0):.1f} | {f.get('notes', '')} |"
        )
    print(f"\nlogs: {logs}")
    sys.exit(1 if failed else 0)


def _try(f):
    try:
        f()
        return True
    except Exception:
        return False


def figures_of(case, status, started, ok, notes=""):
    m = status.get("metrics", {})
    return {
        "case": case,
        "ok": ok,
        "attempts": f"{m.get('task_attempts', 0)} / {tasks_of(status) if status.get('stages') else 0}",
        "speculative": f"{m.get('speculative_attempts', 0)} ({m.get('speculative_wins', 0)})",
        "hedged": f"{m.get('hedged_reads', 0)} ({m.get('hedge_wins', 0)})",
        "seconds": time.monotonic() - started,
        "notes": notes,
    }


def proxy_case(cluster, s3, repo):
    """Each job clean, then with the proxy's faults armed: the same answer."""
    cluster.start_driver()
    for i in range(3):
        cluster.start_host(f"host-{i}", slots=1)
    cluster.wait_hosts(3)
    out = []
    jobs = [("orders", None)] + [(q, None) for q in ["q5", "q9", "q18"]]
    for name, _ in jobs:
        answers = []
        for armed in (False, True):
            cluster.proxy.armed = armed
            before = dict(cluster.proxy.counts)
            started = time.monotonic()
            if name == "orders":
                prefix = f"out/proxy-orders-{int(armed)}"
                job_id = cluster.submit(orders_job(repo, f"s3://{BUCKET}/{prefix}"))
            else:
                job_id = cluster.submit(tpch_job(repo, name))
            status = cluster.wait(job_id)
            cluster.proxy.armed = False
            ok = status["state"] == "succeeded"
            answer = None
            if ok:
                answer = written_rows(s3, prefix + "/") if name == "orders" else cluster.rows(job_id)
            answers.append(answer)
            if armed:
                counts = {k: cluster.proxy.counts[k] - before[k] for k in before}
                same = ok and answers[0] == answers[1] and answers[0] is not None
                notes = (
                    f"{counts['cut']} of {counts['connections']} connections cut, {counts['delayed']} held 2 s; "
                    + ("same rows as the clean run" if same else f"DIFFERENT: {status.get('error')}")
                )
                out.append(figures_of(f"proxy {name}", status, started, same, notes))
                print(out[-1], flush=True)
    cluster.stop()
    return out


def kill_case(cluster, s3, repo):
    """q9 writing Parquet; the driver killed at ten points, then restarted."""
    cluster.start_driver(name="driver-clean")
    for i in range(3):
        cluster.start_host(f"host-{i}", delay_ms=150, slots=1)
    cluster.wait_hosts(3)
    clean_prefix = "out/q9-clean/"
    started = time.monotonic()
    clean = cluster.wait(cluster.submit(tpch_job(repo, "q9", f"s3://{BUCKET}/{clean_prefix}")))
    assert clean["state"] == "succeeded", clean
    clean_seconds = time.monotonic() - started
    expected = written_rows(s3, clean_prefix)
    total = tasks_of(clean)
    # Points: share of tasks finished, a stage just completed, the commit.
    points = [("tasks", f) for f in (0.05, 0.15, 0.3, 0.45, 0.6, 0.75, 0.85, 0.95)] + [("stage", 2), ("commit", 0)]
    out = []
    for n, (kind, at) in enumerate(points):
        prefix = f"out/q9-kill-{n}/"
        env = {"IGNIS_TEST_COMMIT_PAUSE_MS": "3000"} if kind == "commit" else None
        cluster.kill_driver()
        cluster.start_driver(env, name=f"driver-{n}")
        started = time.monotonic()
        job_id = cluster.submit(tpch_job(repo, "q9", f"s3://{BUCKET}/{prefix}"))

        def reached():
            s = cluster.status(job_id)
            stages = s.get("stages", [])
            done = sum(st["succeeded"] for st in stages)
            if kind == "tasks":
                return done >= max(1, int(at * total))
            if kind == "stage":
                return sum(1 for st in stages if st["tasks"] and st["succeeded"] == st["tasks"]) >= at
            return any(k.endswith("_ignis_commit.json") for k in keys(s3, prefix))

        wait_for(f"kill point {n}", reached, every=0.02)
        before = cluster.status(job_id)
        done_before = sum(st["succeeded"] for st in before.get("stages", []))
        cluster.kill_driver()
        cluster.start_driver(name=f"driver-{n}-resumed")
        status = cluster.wait(job_id)
        listed = keys(s3, prefix)
        files = [k for k in listed if k.endswith(".parquet")]
        staging = [k for k in listed if "/_temporary/" in k or k.endswith((".lock", "_ignis_commit.json"))]
        rows = written_rows(s3, prefix) if status["state"] == "succeeded" else None
        manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=prefix + "_SUCCESS")["Body"].read()) if rows else {}
        twice = len(files) != len(set(files)) or sorted(manifest.get("files", [])) != sorted(
            f[len(prefix) :] for f in files
        )
        fewer = task_attempts(status) < total
        ok = rows == expected and not staging and not twice and fewer
        notes = (
            f"killed at {kind} {at} ({done_before} of {total} tasks done); "
            + ("same rows, no staging, no file twice" if rows == expected else f"DIFFERENT: {status.get('error')}")
            + ("" if not staging else f"; staging left: {staging[:3]}")
            + ("" if not twice else "; files do not match the manifest")
        )
        out.append(figures_of(f"kill -9 #{n + 1}", status, started, ok, notes))
        print(out[-1], flush=True)
    out.append({"case": "q9 clean run", "ok": True, "attempts": f"{task_attempts(clean)} / {total}",
                "seconds": clean_seconds, "notes": "the reference for the kill cases"})  # fmt: skip
    cluster.stop()
    return out


def slow_case(cluster, repo):
    """One host 20x slower: time with speculation, without, and with no slow host."""
    job = tpch_job(repo, "q9")
    out = []
    cluster.start_driver(name="driver-slow")
    for i in range(3):
        cluster.start_host(f"host-{i}", slots=1)
    cluster.wait_hosts(3)
    started = time.monotonic()
    base = cluster.wait(cluster.submit(job))
    base_s = time.monotonic() - started
    # The median task: the fast hosts' time per task.
    per_task_ms = max(50, int(1000 * base_s * 3 / max(1, tasks_of(base))))
    out.append(figures_of("no slow host", base, started, base["state"] == "succeeded", "the reference"))
    cluster.stop_host("host-2")
    cluster.start_host("host-slow", delay_ms=19 * per_task_ms, slots=1)
    cluster.wait_hosts(3)
    for speculation in (False, True):
        spec_job = dict(job, config=dict(job["config"], speculation=speculation))
        started = time.monotonic()
        status = cluster.wait(cluster.submit(spec_job))
        seconds = time.monotonic() - started
        ok = status["state"] == "succeeded" and (not speculation or seconds <= 1.5 * base_s)
        notes = f"{seconds / base_s:.2f}x the time with no slow host (slow host: +{19 * per_task_ms} ms per task)"
        out.append(figures_of(f"slow host, speculation {'on' if speculation else 'off'}", status, started, ok, notes))
        print(out[-1], flush=True)
    cluster.stop()
    return out


def stuck_case(cluster, repo):
    """A host that takes tasks and never answers; deadline 3 s."""
    cluster.start_driver(name="driver-stuck")
    cluster.start_host("host-0", slots=1)
    cluster.start_host("host-1", slots=1)
    cluster.start_host("host-stuck", delay_ms=600000, slots=1)
    cluster.wait_hosts(3)
    job = tpch_job(repo, "q9")
    job["config"]["task_deadline_s"] = 3.0
    job["config"]["speculation"] = False  # a deadline case: speculation would rescue the task first
    started = time.monotonic()
    status = cluster.wait(cluster.submit(job))
    failed = sum(s["failed_attempts"] for s in status.get("stages", []))
    ok = status["state"] == "succeeded" and failed >= 1
    out = [figures_of("stuck host", status, started, ok, f"{failed} attempts abandoned at the deadline, retried")]
    print(out[-1], flush=True)
    cluster.stop()
    return out


if __name__ == "__main__":
    main()
