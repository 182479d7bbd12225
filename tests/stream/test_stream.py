"""Structured streaming end to end: `ignis run` on a stream job against a real
Kafka-protocol broker (Tansu) and moto, answers checked with DuckDB over the
events the test produced."""

import io
import json
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import free_port, port_open, wait_for

BASE = datetime(2026, 11, 29, 8, 0, 0)
COUNTRIES = ["US", "FR", "DE", "JP", "BR"]
WINDOW_QUERY = "SELECT window(ts, '1 minute') AS w, country, count(*) AS n, sum(amount) AS amount FROM events GROUP BY 1, 2"


def create_topic(kafka, topic, partitions):
    admin = AdminClient({"bootstrap.servers": kafka})
    for future in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).values():
        future.result()


def produce(kafka, topic, events, partitions):
    """Each event to partition i % partitions, in order: event times advance
    in step across partitions."""
    producer = Producer({"bootstrap.servers": kafka, "linger.ms": 20})
    for i, e in enumerate(events):
        producer.produce(topic, value=json.dumps(e), partition=i % partitions)
        if i % 10000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0


def events(start, count, step_ms=50):
    return [
        {"ts": (BASE + timedelta(milliseconds=(start + i) * step_ms)).isoformat(),
         "country": COUNTRIES[(start + i) % 5], "amount": (start + i) % 100}
        for i in range(count)
    ]


def stream_job(path, kafka, topic, checkpoint, output, max_per_batch, delay="10 minutes", query=WINDOW_QUERY):
    path.write_text(f"""
[tables.events]
format = "kafka"
options = {{ bootstrap_servers = "{kafka}", topic = "{topic}", starting_offsets = "earliest", max_offsets_per_trigger = {max_per_batch}, schema = "ts TIMESTAMP, country STRING, amount BIGINT" }}

[stream]
trigger = "available_now"
checkpoint = "{checkpoint}"
output_mode = "append"
watermark = {{ column = "ts", delay = "{delay}" }}
sql = "{query}"

[output.write]
format = "parquet"
location = "{output}"
""")
    return path


def expected_windows(rows, watermark):
    """Per 1-minute window and country: count and sum, of windows that end at
    or before the watermark (append mode emits only those), via DuckDB."""
    produced = pa.Table.from_pylist(rows)
    return duckdb.sql(
        """SELECT time_bucket(INTERVAL 1 minute, CAST(ts AS TIMESTAMP)) AS start, country,
                  count(*) AS n, sum(amount) AS amount
           FROM produced GROUP BY 1, 2
           HAVING start + INTERVAL 1 minute <= CAST(? AS TIMESTAMP) ORDER BY 1, 2""",
        params=[watermark],
    ).fetchall()


def got_windows(written):
    return duckdb.sql(
        "SELECT w['start'] AS start, country, n, amount FROM written ORDER BY 1, 2"
    ).fetchall()


def read_s3_parquet(s3, bucket, prefix):
    """The files of a committed Ignis output: those its _SUCCESS manifest lists."""
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/_SUCCESS")["Body"].read())
    tables = [pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=f"{prefix}/{f}")["Body"].read()))
              for f in manifest["files"]]
    return pa.concat_tables(tables) if tables else None


def read_local_parquet(directory):
    manifest = json.loads((directory / "_SUCCESS").read_text())
    return pa.concat_tables([pq.read_table(directory / f) for f in manifest["files"]])


def reported_watermark(line):
    return datetime.fromisoformat(line.split("watermark ")[1].split(",")[0])


def summary(stderr):
    line = [l for l in stderr.splitlines() if " batches, " in l]
    assert line, stderr
    return line[-1]


def test_windowed_counts_from_kafka_to_parquet_on_s3_equal_duckdb_without_the_late_rows(kafka, s3, ignis, workdir):
    create_topic(kafka, "orders-events", 3)
    on_time = events(0, 100_000)
    produce(kafka, "orders-events", on_time, 3)
    # Two hours behind everything produced before them: late whichever batch reads them.
    late = [{"ts": (BASE + timedelta(hours=-2, seconds=i)).isoformat(), "country": "US", "amount": 1}
            for i in range(300)]
    produce(kafka, "orders-events", late, 3)

    job = stream_job(workdir / "kafka-windows.toml", kafka, "orders-events",
                     "s3://streams/checkpoints/windows", "s3://streams/windows", 25_000)
    run = ignis.run(job)
    assert run.returncode == 0, run.stderr
    line = summary(run.stderr)
    assert "100300 input rows (300 late, dropped)" in line, line

    max_ts = datetime.fromisoformat(on_time[-1]["ts"])
    watermark = max_ts - timedelta(minutes=10)
    assert reported_watermark(line) == watermark.replace(tzinfo=timezone.utc), line
    want = expected_windows(on_time, watermark)
    got = got_windows(read_s3_parquet(s3, "streams", "windows"))
    assert len(want) > 100
    assert got == want

    # More events: a restart from the checkpoint reads only those, and closes more windows.
    more = events(100_000, 20_000)
    produce(kafka, "orders-events", more, 3)
    run = ignis.run(job)
    assert run.returncode == 0, run.stderr
    assert "20000 input rows (0 late, dropped)" in summary(run.stderr)
    watermark = datetime.fromisoformat(more[-1]["ts"]) - timedelta(minutes=10)
    assert got_windows(read_s3_parquet(s3, "streams", "windows")) == expected_windows(on_time + more, watermark)


CRASH_POINTS = [
    "before-offsets:1", "after-offsets:1", "after-staging:1", "after-stats:1", "after-state:1", "after-sink:1",
    "after-commit:1", "after-offsets:2", "after-state:2", "after-sink:2",
]


def test_a_driver_killed_at_any_point_of_a_batch_loses_and_repeats_nothing(kafka, ignis, workdir):
    create_topic(kafka, "crash-events", 2)
    rows = events(0, 4_000, step_ms=1_000)
    produce(kafka, "crash-events", rows, 2)

    clean = stream_job(workdir / "clean.toml", kafka, "crash-events", workdir / "clean-ck", workdir / "clean-out", 1_000,
                       delay="2 minutes")
    run = ignis.run(clean)
    assert run.returncode == 0, run.stderr
    reference = got_windows(read_local_parquet(workdir / "clean-out"))
    watermark = datetime.fromisoformat(rows[-1]["ts"]) - timedelta(minutes=2)
    assert reference == expected_windows(rows, watermark)

    job = stream_job(workdir / "crashy.toml", kafka, "crash-events", workdir / "crash-ck", workdir / "crash-out", 1_000,
                     delay="2 minutes")
    for point in CRASH_POINTS:
        run = ignis.run(job, crash=point)
        assert run.returncode == -signal.SIGABRT, f"{point}: did not crash there: rc {run.returncode}\n{run.stderr}"
        assert f"ending the process at {point.replace(':', ' of batch ')}" in run.stderr
    run = ignis.run(job)
    assert run.returncode == 0, run.stderr
    assert got_windows(read_local_parquet(workdir / "crash-out")) == reference
    # Through Ignis too: a batch job reading the output directory sees each row once.
    check = workdir / "count.toml"
    check.write_text(f"""
sql = "SELECT count(*) AS windows, sum(n) AS n FROM out"
[tables.out]
format = "parquet"
location = "{workdir / 'crash-out'}/"
""")
    run = ignis.run(check)
    assert run.returncode == 0, run.stderr
    assert f"| {len(reference)} " in run.stdout and f"| {sum(r[2] for r in reference)} " in run.stdout, run.stdout


def test_files_dropped_into_an_s3_prefix_while_the_stream_runs_are_each_processed_once(s3, ignis, workdir):
    job = workdir / "files.toml"
    job.write_text("""
[tables.drops]
format = "csv"
location = "s3://streams/drops/"
stream = true
options = { schema = "id BIGINT, country STRING" }

[stream]
trigger = "1s"
checkpoint = "s3://streams/checkpoints/drops"
sql = "SELECT id, country FROM drops WHERE country <> 'XX'"

[output.write]
format = "parquet"
location = "s3://streams/drops-out"
""")

    def drop(i):
        body = "id,country\n" + "".join(f"{i * 100 + j},{COUNTRIES[j % 5]}\n" for j in range(100)) + f"{i},XX\n"
        s3.put_object(Bucket="streams", Key=f"drops/file-{i:03d}.csv", Body=body.encode())

    drop(0)
    proc = ignis.start(job)
    try:
        for i in range(1, 6):
            time.sleep(1.5)
            drop(i)
        time.sleep(4)
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    line = summary(stderr)
    assert "606 input rows" in line and "600 output rows" in line, line
    ids = sorted(read_s3_parquet(s3, "streams", "drops-out").column("id").to_pylist())
    assert ids == list(range(600))

    # A restart finds nothing new; a new file is picked up alone.
    drop(6)
    once = workdir / "files-once.toml"
    once.write_text(job.read_text().replace('trigger = "1s"', 'trigger = "available_now"'))
    run = ignis.run(once)
    assert run.returncode == 0, run.stderr
    line = summary(run.stderr)
    assert "1 batches" in line and "100 output rows" in line, line
    ids = sorted(read_s3_parquet(s3, "streams", "drops-out").column("id").to_pylist())
    assert ids == list(range(700))


def test_a_stream_job_with_a_mistake_is_refused_naming_it(ignis, workdir, kafka):
    job = workdir / "bad.toml"
    job.write_text(f"""
[tables.events]
format = "kafka"
options = {{ bootstrap_servers = "{kafka}", topic = "orders-events", starting_offsets = "earliest", schema = "ts TIMESTAMP, country STRING, amount BIGINT" }}
[stream]
checkpoint = "{workdir / 'bad-ck'}"
trigger = "once"
sql = "SELECT country, count(*) FROM events GROUP BY country"
""")
    run = ignis.run(job)
    assert run.returncode != 0
    assert "append mode with an aggregation needs a watermark" in run.stderr, run.stderr

    job.write_text(job.read_text().replace('trigger = "once"', 'trigger = "soon"'))
    run = ignis.run(job)
    assert run.returncode != 0
    assert 'stream.trigger: "soon" is not a duration' in run.stderr, run.stderr


def test_update_mode_joined_to_a_batch_table_ends_with_every_window_at_its_full_count(ignis, workdir):
    """Update mode writes, each batch, the windows its rows fell in, with their
    counts so far; the last row written for a window is its full count. The
    stream is joined to a batch table of country names."""
    src = workdir / "upd-in"
    src.mkdir()
    (workdir / "countries.csv").write_text("code,name\nUS,United States\nFR,France\nDE,Germany\nJP,Japan\nBR,Brazil\n")
    rows = events(0, 3_000, step_ms=200)
    for f in range(3):
        part = rows[f * 1000:(f + 1) * 1000]
        (src / f"part-{f}.json").write_text("".join(json.dumps(r) + "\n" for r in part))
    job = workdir / "update.toml"
    job.write_text(f"""
[tables.events]
format = "json"
location = "{src}/"
stream = true
options = {{ schema = "ts TIMESTAMP, country STRING, amount BIGINT", max_files_per_trigger = 1 }}

[tables.countries]
format = "csv"
location = "{workdir / 'countries.csv'}"

[stream]
trigger = "available_now"
checkpoint = "{workdir / 'upd-ck'}"
output_mode = "update"
watermark = {{ column = "ts", delay = "1 minute" }}
sql = "SELECT window(e.ts, '1 minute') AS w, c.name, count(*) AS n FROM events e JOIN countries c ON e.country = c.code GROUP BY 1, 2"

[output.write]
format = "parquet"
location = "{workdir / 'upd-out'}"
""")
    run = ignis.run(job)
    assert run.returncode == 0, run.stderr
    assert "3 batches, 3000 input rows (0 late, dropped)" in summary(run.stderr)
    out = workdir / "upd-out"
    manifest = json.loads((out / "_SUCCESS").read_text())
    latest = {}
    batches = set()
    for name in manifest["files"]:
        batch = int(name.rsplit("-", 1)[1].split(".")[0])
        batches.add(batch)
        for r in pq.read_table(out / name).to_pylist():
            key = (r["w"]["start"], r["name"])
            if key not in latest or latest[key][0] < batch:
                latest[key] = (batch, r["n"])
    assert batches == {0, 1, 2}
    names = {"US": "United States", "FR": "France", "DE": "Germany", "JP": "Japan", "BR": "Brazil"}
    produced = pa.Table.from_pylist(rows)
    want = {(start, names[c]): n for start, c, n in duckdb.sql(
        "SELECT time_bucket(INTERVAL 1 minute, CAST(ts AS TIMESTAMP)), country, count(*) FROM produced GROUP BY 1, 2"
    ).fetchall()}
    assert {k: v[1] for k, v in latest.items()} == want


def test_a_stream_submitted_to_a_driver_runs_until_stopped_and_keeps_to_its_tenant(kafka, moto, s3, ignis, workdir):
    """`ignis submit` starts a stream on `ignis serve`; `ignis status` shows its
    batches and watermark; `ignis stop` ends it after its running batch. Only
    the brokers the driver allows are reachable, only the tenant's prefix writable."""
    tenants = workdir / "stream-tenants.toml"
    tenants.write_text('[tenants.alice]\nkeys = ["alice-stream-key"]\nprefixes = ["s3://streams/alice/"]\n')
    port = free_port()
    env = dict(ignis.env, RUST_LOG="warn")
    log = open(workdir / "serve.log", "w")
    serve = subprocess.Popen(
        [ignis.bin, "serve", "--listen", f"127.0.0.1:{port}", "--local-executors", "2",
         "--api-keys-file", str(tenants), "--allow-kafka-brokers", kafka,
         "--shuffle-root", "s3://streams/_shuffle/", "--udf-root", "s3://streams/_udfs/"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    driver = f"http://127.0.0.1:{port}"
    cli = lambda *args: subprocess.run(  # noqa: E731
        [ignis.bin, *args, "--driver", driver, "--api-key", "alice-stream-key"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    try:
        wait_for(lambda: port_open(port), "ignis serve")
        create_topic(kafka, "api-events", 2)
        first = events(0, 6_000, step_ms=100)
        produce(kafka, "api-events", first, 2)
        job = stream_job(workdir / "api-stream.toml", kafka, "api-events", "s3://streams/alice/ck",
                         "s3://streams/alice/windows", 100_000, delay="1 minute")
        job.write_text(job.read_text().replace('trigger = "available_now"', 'trigger = "1s"'))
        submitted = cli("submit", str(job))
        assert submitted.returncode == 0, submitted.stderr
        stream_id = submitted.stdout.strip()
        assert "ignis stop" in submitted.stderr

        def status():
            run = cli("status", stream_id)
            assert run.returncode == 0, run.stderr
            return run.stdout

        wait_for(lambda: "6000 input rows" in status(), "the first batch", timeout=120)
        more = events(6_000, 3_000, step_ms=100)
        produce(kafka, "api-events", more, 2)
        wait_for(lambda: "9000 input rows" in status(), "the second batch", timeout=120)
        shown = status()
        assert "running" in shown and "watermark 2026-11-29T08:" in shown, shown

        stopped = cli("stop", stream_id)
        assert stopped.returncode == 0, stopped.stderr
        wait_for(lambda: "succeeded" in status(), "the stream to stop", timeout=60)
        assert cli("stop", stream_id).returncode != 0  # already finished

        watermark = datetime.fromisoformat(more[-1]["ts"]) - timedelta(minutes=1)
        got = got_windows(read_s3_parquet(s3, "streams", "alice/windows"))
        assert got == expected_windows(first + more, watermark)

        # Another broker than the allowed one, or a checkpoint outside the prefix: refused at submit.
        other = job.read_text().replace(kafka, "127.0.0.1:1")
        (workdir / "other-broker.toml").write_text(other)
        run = cli("submit", str(workdir / "other-broker.toml"))
        assert run.returncode != 0 and "broker 127.0.0.1:1 is not one this driver lets jobs reach" in run.stderr
        outside = job.read_text().replace("s3://streams/alice/ck", "s3://streams/_shuffle/ck")
        (workdir / "outside.toml").write_text(outside)
        run = cli("submit", str(workdir / "outside.toml"))
        assert run.returncode != 0 and "stream.checkpoint" in run.stderr, run.stderr
    finally:
        serve.terminate()
        serve.wait(30)


def test_rows_go_from_one_topic_to_another(kafka, ignis, workdir):
    """Kafka in (Spark's raw columns: key, value as bytes, offset, ...) and
    Kafka out (the `key` and `value` columns of each row)."""
    from confluent_kafka import Consumer, TopicPartition

    create_topic(kafka, "words-in", 2)
    create_topic(kafka, "words-out", 3)
    producer = Producer({"bootstrap.servers": kafka})
    for i in range(500):
        producer.produce("words-in", key=f"k{i % 10}", value=f"word-{i}", partition=i % 2)
    assert producer.flush(30) == 0
    job = workdir / "kafka-to-kafka.toml"
    job.write_text(f"""
[tables.words]
format = "kafka"
options = {{ bootstrap_servers = "{kafka}", topic = "words-in", starting_offsets = "earliest", max_offsets_per_trigger = 200 }}

[stream]
trigger = "available_now"
checkpoint = "{workdir / 'k2k-ck'}"
sql = "SELECT key, upper(CAST(value AS VARCHAR)) || ' @' || CAST(\\"offset\\" AS VARCHAR) AS value FROM words WHERE CAST(value AS VARCHAR) NOT LIKE '%7'"

[output.write]
format = "kafka"
topic = "words-out"
bootstrap_servers = "{kafka}"
""")
    run = ignis.run(job)
    assert run.returncode == 0, run.stderr
    line = summary(run.stderr)
    assert "3 batches, 500 input rows" in line and "450 output rows" in line, line

    consumer = Consumer({"bootstrap.servers": kafka, "group.id": "words-check", "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition("words-out", p, 0) for p in range(3)])
    got = []
    partitions = {}
    deadline = time.time() + 30
    while len(got) < 450 and time.time() < deadline:
        m = consumer.poll(1)
        if m is not None and m.error() is None:
            got.append((m.key().decode(), m.value().decode()))
            partitions.setdefault(m.key().decode(), set()).add(m.partition())
    consumer.close()
    want = sorted((f"k{i % 10}", f"WORD-{i} @{i // 2}") for i in range(500) if not str(i).endswith("7"))
    assert sorted(got) == want

    # Each key in the partition the Java client's default partitioner picks
    # (librdkafka's murmur2_random is the same hash).
    create_topic(kafka, "words-probe", 3)
    probe = Producer({"bootstrap.servers": kafka, "partitioner": "murmur2_random"})
    java_partition = {}
    for k in range(10):
        probe.produce("words-probe", key=f"k{k}", value=b"",
                      on_delivery=lambda err, m: java_partition.__setitem__(m.key().decode(), m.partition()))
    assert probe.flush(30) == 0
    # (k7's rows are all filtered out: every word ending in 7 has key k7.)
    assert partitions == {k: {p} for k, p in java_partition.items() if k != "k7"}


def test_a_stream_on_executor_hosts_survives_a_host_killed_mid_stream(kafka, moto, s3, ignis, workdir):
    """Batches run as tasks on three executor hosts; one is killed (-9) while
    the stream runs: its tasks re-run on the others, and every window still
    comes out once with its full count."""
    tenants = workdir / "host-tenants.toml"
    tenants.write_text('[tenants.alice]\nkeys = ["alice-hosts-key"]\nprefixes = ["s3://streams/hosts/"]\n')
    port = free_port()
    env = dict(ignis.env, RUST_LOG="warn")
    driver = f"http://127.0.0.1:{port}"
    procs = [subprocess.Popen(
        [ignis.bin, "serve", "--listen", f"127.0.0.1:{port}", "--executor-secret", "host-secret",
         "--default-backend", "hosts", "--executor-timeout", "2", "--heartbeat-interval", "0.5",
         "--api-keys-file", str(tenants), "--allow-kafka-brokers", kafka,
         "--shuffle-root", "s3://streams/_shuffle-hosts/", "--udf-root", "s3://streams/_udfs/"],
        stdout=open(workdir / "hosts-serve.log", "w"), stderr=subprocess.STDOUT, env=env,
    )]
    cli = lambda *args: subprocess.run(  # noqa: E731
        [ignis.bin, *args, "--driver", driver, "--api-key", "alice-hosts-key"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    try:
        wait_for(lambda: port_open(port), "ignis serve")
        hosts = [subprocess.Popen(
            [ignis.bin, "executor", "--driver", driver, "--executor-secret", "host-secret", "--slots", "1",
             "--name", f"host-{i}"],
            stdout=open(workdir / f"host-{i}.log", "w"), stderr=subprocess.STDOUT, env=env,
        ) for i in range(3)]
        procs += hosts
        create_topic(kafka, "host-events", 3)
        rows = events(0, 12_000, step_ms=250)
        produce(kafka, "host-events", rows, 3)
        job = stream_job(workdir / "hosts-stream.toml", kafka, "host-events", "s3://streams/hosts/ck",
                         "s3://streams/hosts/windows", 1_000, delay="2 minutes")
        job.write_text(job.read_text().replace('trigger = "available_now"', 'trigger = "0s"'))
        submitted = cli("submit", str(job))
        assert submitted.returncode == 0, submitted.stderr
        stream_id = submitted.stdout.strip()

        def batches_done():
            out = cli("status", stream_id).stdout
            return int(out.split("stream: ")[1].split(" batches")[0]) if "stream: " in out else 0

        wait_for(lambda: batches_done() >= 3, "three batches", timeout=120)
        hosts[0].kill()
        wait_for(lambda: "12000 input rows" in cli("status", stream_id).stdout, "all events", timeout=180)
        shown = cli("status", stream_id).stdout
        assert "running" in shown, shown
        assert cli("stop", stream_id).returncode == 0
        wait_for(lambda: "succeeded" in cli("status", stream_id).stdout, "the stream to stop", timeout=60)

        watermark = datetime.fromisoformat(rows[-1]["ts"]) - timedelta(minutes=2)
        assert got_windows(read_s3_parquet(s3, "streams", "hosts/windows")) == expected_windows(rows, watermark)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


def test_duplicates_within_the_watermark_are_dropped_across_batches(kafka, ignis, workdir):
    """A producer that re-sends: every fifth event comes again 5 s (50 events)
    later, often in the next batch. With `deduplicate = ["id"]` each id is
    written once."""
    create_topic(kafka, "resent-events", 2)
    base = events(0, 3_000, step_ms=100)
    for i, e in enumerate(base):
        e["id"] = i
    sent = []
    for i, e in enumerate(base):
        sent.append(e)
        if i >= 50 and (i - 50) % 5 == 0:
            sent.append(base[i - 50])
    producer = Producer({"bootstrap.servers": kafka})
    for e in sent:
        producer.produce("resent-events", value=json.dumps(e), partition=0)
    assert producer.flush(30) == 0
    job = workdir / "dedup.toml"
    job.write_text(f"""
[tables.events]
format = "kafka"
options = {{ bootstrap_servers = "{kafka}", topic = "resent-events", starting_offsets = "earliest", max_offsets_per_trigger = 400, schema = "id BIGINT, ts TIMESTAMP, country STRING, amount BIGINT" }}

[stream]
trigger = "available_now"
checkpoint = "{workdir / 'dedup-ck'}"
watermark = {{ column = "ts", delay = "1 minute" }}
deduplicate = ["id"]
sql = "SELECT id, country FROM events"

[output.write]
format = "parquet"
location = "{workdir / 'dedup-out'}"
""")
    run = ignis.run(job)
    assert run.returncode == 0, run.stderr
    line = summary(run.stderr)
    assert f"{len(sent)} input rows (0 late, dropped), 3000 output rows" in line, line
    ids = sorted(read_local_parquet(workdir / "dedup-out").column("id").to_pylist())
    assert ids == list(range(3000))


def test_a_long_file_stream_keeps_a_bounded_checkpoint_and_still_reads_each_file_once(ignis, workdir):
    src = workdir / "many"
    src.mkdir()
    for i in range(10):
        (src / f"f-{i:02d}.csv").write_text(f"id\n{i}\n")
    ck = workdir / "many-ck"
    job = workdir / "many.toml"
    job.write_text(f"""
[tables.t]
format = "csv"
location = "{src}/"
stream = true
options = {{ schema = "id BIGINT", max_files_per_trigger = 1 }}
[stream]
trigger = "available_now"
checkpoint = "{ck}"
retained_batches = 3
sql = "SELECT id FROM t"
[output.write]
format = "parquet"
location = "{workdir / 'many-out'}"
""")
    run = ignis.run(job)
    assert run.returncode == 0, run.stderr
    assert "10 batches, 10 input rows" in summary(run.stderr)
    # Batches 0..9, compacted after 2, 5 and 8: the logs of 6..9 and one list remain.
    assert sorted(p.name for p in (ck / "offsets").iterdir()) == ["6", "7", "8", "9"]
    assert sorted(p.name for p in (ck / "commits").iterdir()) == ["6", "7", "8", "9"]
    assert [p.name for p in (ck / "compact").iterdir()] == ["8"]
    (src / "f-10.csv").write_text("id\n10\n")
    run = ignis.run(job)
    assert run.returncode == 0, run.stderr
    assert "1 batches, 1 input rows" in summary(run.stderr)
    assert sorted(read_local_parquet(workdir / "many-out").column("id").to_pylist()) == list(range(11))


def test_sliding_windows_from_kafka_each_emitted_once_when_closed(kafka, ignis, workdir):
    """window(ts, '2 minutes', '30 seconds'): every event counts in four
    windows; each window is written once, in the batch whose watermark passes
    its end, with its full count."""
    create_topic(kafka, "sliding-events", 2)
    rows = events(0, 6_000, step_ms=100)
    produce(kafka, "sliding-events", rows, 2)
    query = ("SELECT window(ts, '2 minutes', '30 seconds') AS w, country, count(*) AS n, sum(amount) AS amount "
             "FROM events GROUP BY 1, 2")
    job = stream_job(workdir / "sliding.toml", kafka, "sliding-events", workdir / "sliding-ck",
                     workdir / "sliding-out", 1_000, delay="30 seconds", query=query)
    run = ignis.run(job)
    assert run.returncode == 0, run.stderr
    line = summary(run.stderr)
    assert "6 batches, 6000 input rows (0 late, dropped)" in line, line
    watermark = reported_watermark(line).replace(tzinfo=None)
    produced = pa.Table.from_pylist(rows)
    want = duckdb.sql(
        """WITH t AS (SELECT CAST(ts AS TIMESTAMP) AS ts, country, amount FROM produced),
                w AS (SELECT time_bucket(INTERVAL 30 second, ts) - INTERVAL (30 * k) second AS start, country, amount
                      FROM t, range(4) AS r(k))
           SELECT start, country, count(*), sum(amount) FROM w
           GROUP BY 1, 2 HAVING start + INTERVAL 2 minute <= CAST(? AS TIMESTAMP) ORDER BY 1, 2""",
        params=[watermark],
    ).fetchall()
    got = got_windows(read_local_parquet(workdir / "sliding-out"))
    assert len(want) > 40
    assert got == want


def test_pyspark_read_stream_and_write_stream_through_spark_connect(kafka, moto, s3, ignis, workdir):
    """spark.readStream.format("kafka")...writeStream...start() runs as an
    Ignis stream on the driver, under the tenant's rules; query.status,
    lastProgress, awaitTermination and stop answer as pyspark expects."""
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    tenants = workdir / "connect-tenants.toml"
    tenants.write_text('[tenants.alice]\nkeys = ["alice-connect-stream"]\nprefixes = ["s3://streams/pyspark/"]\n')
    http, grpc = free_port(), free_port()
    env = dict(ignis.env, RUST_LOG="warn")
    serve = subprocess.Popen(
        [ignis.bin, "serve", "--listen", f"127.0.0.1:{http}", "--spark-connect", f"127.0.0.1:{grpc}",
         "--local-executors", "2", "--api-keys-file", str(tenants), "--allow-kafka-brokers", kafka,
         "--shuffle-root", "s3://streams/_shuffle-connect/", "--udf-root", "s3://streams/_udfs/"],
        stdout=open(workdir / "connect-serve.log", "w"), stderr=subprocess.STDOUT, env=env,
    )
    try:
        wait_for(lambda: port_open(grpc), "ignis serve --spark-connect")
        create_topic(kafka, "py-events", 2)
        producer = Producer({"bootstrap.servers": kafka})
        for i in range(3000):
            producer.produce("py-events", key=f"k{i % 4}", value=f"event-{i}", partition=i % 2)
        assert producer.flush(30) == 0
        spark = SparkSession.builder.remote(f"sc://127.0.0.1:{grpc}/;x-api-key=alice-connect-stream").getOrCreate()
        source = (spark.readStream.format("kafka").option("kafka.bootstrap.servers", kafka)
                  .option("subscribe", "py-events").option("startingOffsets", "earliest")
                  .option("maxOffsetsPerTrigger", 1000).load())
        shaped = (source.select(F.col("key").cast("string").alias("k"), F.upper(F.col("value").cast("string")).alias("v"))
                  .where(F.col("k") != "k3"))
        query = (shaped.writeStream.format("parquet").option("checkpointLocation", "s3://streams/pyspark/ck")
                 .trigger(availableNow=True).start("s3://streams/pyspark/out"))
        query.awaitTermination()
        assert not query.isActive
        progress = query.lastProgress
        assert (progress["batchId"], progress["numInputRows"]) == (2, 1000), progress
        got = sorted(tuple(r.values()) for r in read_s3_parquet(s3, "streams", "pyspark/out").to_pylist())
        assert got == sorted((f"k{i % 4}", f"EVENT-{i}") for i in range(3000) if i % 4 != 3)

        # A running query: status while it runs, stop() ends it.
        running = (shaped.writeStream.format("parquet").option("checkpointLocation", "s3://streams/pyspark/ck2")
                   .trigger(processingTime="1 second").start("s3://streams/pyspark/out2"))
        wait_for(lambda: (running.lastProgress or {}).get("batchId") == 2, "the running query's batches")
        assert running.isActive and running.status["isTriggerActive"]
        running.stop()
        assert not running.isActive

        # The tenant's rules: a checkpoint outside its prefix, a broker the driver does not allow.
        with pytest.raises(Exception) as e:
            shaped.writeStream.format("parquet").option("checkpointLocation", "s3://streams/other/ck").start(
                "s3://streams/pyspark/out3")
        assert "stream.checkpoint" in str(e.value)
        elsewhere = (spark.readStream.format("kafka").option("kafka.bootstrap.servers", "127.0.0.1:1")
                     .option("subscribe", "py-events").load())
        with pytest.raises(Exception) as e:
            elsewhere.writeStream.format("parquet").option("checkpointLocation", "s3://streams/pyspark/ck4").start(
                "s3://streams/pyspark/out4")
        assert "broker 127.0.0.1:1" in str(e.value)
        spark.stop()
    finally:
        serve.terminate()
        serve.wait(30)
