"""Spark Connect as a PySpark user meets it: the example program on S3,
errors as pyspark exceptions, cache, interrupt, sessions and tenants."""

import threading
import time
import uuid

import pyarrow.parquet as pq
import pytest
from pyspark.errors import AnalysisException, ParseException
from pyspark.errors.exceptions.connect import SparkConnectException, SparkConnectGrpcException
from pyspark.sql import functions as F

from conftest import ALICE_KEY, BOB_KEY, connect, jobs, make_orders, s3_client


def test_the_example_program_on_s3(ignis, moto, spark, capsys):
    s3 = s3_client(moto)
    orders = make_orders(200, seed=3)
    lines = ["order_id,country,product,amount"] + [f"{r['order_id']},{r['country']},{r['product']},{r['amount']}" for r in orders]
    s3.put_object(Bucket="sales-data", Key="orders.csv", Body="\n".join(lines).encode())

    # The program, verbatim but for the address of the server.
    df = spark.read.csv("s3://sales-data/orders.csv", header=True)
    grouped = df.filter(df.country == "US").groupBy("product").count()
    grouped.show()
    grouped.write.mode("overwrite").parquet("s3://sales-data/output/")

    want = {}
    for r in orders:
        if r["country"] == "US":
            want[r["product"]] = want.get(r["product"], 0) + 1
    shown = capsys.readouterr().out
    for product, n in want.items():
        assert f"|{product.rjust(7)}|{str(n).rjust(5)}|" in shown
    assert {r.product: r["count"] for r in grouped.collect()} == want

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="sales-data", Prefix="output/")["Contents"]]
    assert "output/_SUCCESS" in keys
    parts = [k for k in keys if k.endswith(".parquet")]
    write_job = next(j for j in jobs(ignis, ALICE_KEY) if j["name"] == "spark connect: write")
    result_stage = max(write_job["stages"], key=lambda s: s["id"])
    assert len(parts) == result_stage["tasks"], "one file per final partition"
    assert write_job["output"]["rows"] == len(want)
    back = {}
    for key in parts:
        body = s3.get_object(Bucket="sales-data", Key=key)["Body"].read()
        import io

        for row in pq.read_table(io.BytesIO(body)).to_pylist():
            back[row["product"]] = row["count"]
    assert back == want


def test_every_action_is_an_ignis_job(ignis, spark, data):
    spark.read.parquet(data["customers"]).filter("segment = 'vip'").count()
    job = jobs(ignis, ALICE_KEY)[0]
    assert job["state"] == "succeeded"
    assert job["name"].startswith("spark connect")
    assert len(job["stages"]) >= 2, "the count ran as stages cut at the shuffle"
    assert any(data["customers"] in i for i in job["inputs"])


def test_unknown_column_is_an_analysis_exception(spark, data):
    df = spark.read.parquet(data["customers"])
    with pytest.raises(AnalysisException) as e:
        df.select("nmae").collect()
    message = str(e.value)
    assert "nmae" in message and "`name`" in message and "`segment`" in message


def test_bad_sql_is_a_parse_exception(spark):
    with pytest.raises(ParseException) as e:
        spark.sql("SELEC 1").collect()
    assert "SELEC" in str(e.value)


def test_unknown_function_names_it(spark, data):
    with pytest.raises(AnalysisException) as e:
        spark.read.parquet(data["customers"]).select(F.call_function("no_such_fn", F.col("name"))).collect()
    assert "no_such_fn" in str(e.value)


def test_read_stream_is_analysed_and_write_stream_needs_a_checkpoint(spark, data):
    stream = spark.readStream.schema("name STRING, n BIGINT").json(data["customers"])
    assert stream.columns == ["name", "n"]
    with pytest.raises(Exception) as e:
        stream.writeStream.format("parquet").start("s3://sales-data/stream-out/")
    assert "checkpointLocation" in str(e.value)


def test_refused_location(spark, data):
    with pytest.raises(SparkConnectGrpcException) as e:
        spark.read.parquet(data["bob_root"]).collect()
    assert "outside" in str(e.value) or "may not" in str(e.value)
    with pytest.raises(SparkConnectGrpcException) as e:
        spark.range(3).write.mode("overwrite").parquet("s3://bob-data/stolen/")
    assert "may not write" in str(e.value)


def test_write_modes(spark, data):
    out = data["root"] + "/modes"
    df = spark.range(5)
    df.write.parquet(out)
    with pytest.raises(AnalysisException):
        df.write.parquet(out)  # mode error: the path exists
    df.write.mode("append").parquet(out)
    assert spark.read.parquet(out).count() == 10
    df.write.mode("ignore").parquet(out)
    assert spark.read.parquet(out).count() == 10
    spark.range(2).write.mode("overwrite").parquet(out)
    assert spark.read.parquet(out).count() == 2


def test_partitioned_csv_and_json_writes(spark, data):
    orders = spark.read.parquet(data["orders"]).select("order_id", "country")
    orders.write.mode("overwrite").partitionBy("country").parquet(data["root"] + "/by_country")
    back = spark.read.parquet(data["root"] + "/by_country")
    assert back.count() == 600
    orders.limit(10).write.mode("overwrite").option("header", True).csv(data["root"] + "/csv_out")
    assert spark.read.option("header", True).csv(data["root"] + "/csv_out").count() == 10
    orders.limit(7).write.mode("overwrite").json(data["root"] + "/json_out")
    assert spark.read.json(data["root"] + "/json_out").count() == 7


def test_read_csv_options(spark, data):
    strings = spark.read.csv(data["orders_csv"], header=True)
    assert dict(strings.dtypes)["amount"] == "string"
    typed = spark.read.csv(data["orders_csv"], header=True, inferSchema=True)
    assert dict(typed.dtypes)["amount"] == "double"
    given = spark.read.schema("order_id INT, country STRING, product STRING, amount DOUBLE").option("header", True).csv(data["orders_csv"])
    assert dict(given.dtypes)["order_id"] == "int"
    assert given.count() == 50


def test_config(spark):
    spark.conf.set("spark.sql.shuffle.partitions", "3")
    assert spark.conf.get("spark.sql.shuffle.partitions") == "3"
    spark.range(100).groupBy((F.col("id") % 7).alias("k")).count().collect()
    assert spark.conf.get("spark.some.unknown.key", "fallback") == "fallback"
    with pytest.raises(Exception) as e:
        spark.conf.get("spark.some.unknown.key")
    assert "SQL_CONF_NOT_FOUND" in str(e.value)
    assert spark.conf.isModifiable("spark.sql.shuffle.partitions")
    assert not spark.conf.isModifiable("spark.sql.session.timeZone")
    spark.conf.unset("spark.sql.shuffle.partitions")


def test_shuffle_partitions_setting_reaches_the_job(ignis, spark):
    spark.conf.set("spark.sql.shuffle.partitions", "5")
    try:
        spark.range(100).groupBy((F.col("id") % 7).alias("k")).count().collect()
    finally:
        spark.conf.unset("spark.sql.shuffle.partitions")
    job = jobs(ignis, ALICE_KEY)[0]
    assert max(s["tasks"] for s in job["stages"]) == 5


def test_cache_second_action_reads_the_cache(ignis, spark, data):
    df = spark.read.parquet(data["orders"]).filter("amount > 100")
    df.cache()
    assert df.storageLevel.useDisk
    first = df.count()
    second = df.groupBy("country").count().collect()
    assert sum(r["count"] for r in second) == first
    latest = jobs(ignis, ALICE_KEY)[0]
    assert latest["cache_reads"], "the second action read the cached rows"
    assert not any(data["orders"] in i for i in latest["inputs"]), "no scan of the source"
    df.unpersist()
    assert not df.storageLevel.useDisk
    df.count()
    assert jobs(ignis, ALICE_KEY)[0]["cache_reads"] == []


def test_interrupt_cancels_the_job(ignis, spark):
    big = spark.range(4000).crossJoin(spark.range(4000).withColumnRenamed("id", "j"))
    slow = big.groupBy((F.col("id") * F.col("j") % 1000).alias("k")).count()
    errors = []

    def run():
        try:
            slow.collect()
        except Exception as e:  # the interrupted action fails in its thread
            errors.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        running = [j for j in jobs(ignis, ALICE_KEY) if j["state"] == "running"]
        if running:
            break
        time.sleep(0.1)
    assert running, "the action started a job"
    interrupted = spark.interruptAll()
    assert interrupted
    worker.join(60)
    assert errors and "cancel" in str(errors[0]).lower()
    deadline = time.time() + 30
    while time.time() < deadline:
        state = next(j for j in jobs(ignis, ALICE_KEY) if j["id"] == running[0]["id"])["state"]
        if state != "running":
            break
        time.sleep(0.1)
    assert state == "cancelled"


def test_two_sessions_have_their_own_views(ignis, spark, data):
    other = connect(ignis, ALICE_KEY)
    try:
        spark.range(3).createOrReplaceTempView("mine")
        other.range(5).createOrReplaceTempView("mine")
        assert spark.table("mine").count() == 3
        assert other.table("mine").count() == 5
        spark.range(1).createOrReplaceTempView("only_first")
        with pytest.raises(AnalysisException) as e:
            other.table("only_first").collect()
        assert "TABLE_OR_VIEW_NOT_FOUND" in str(e.value)
    finally:
        other.stop()


def test_tenants_are_isolated(ignis, spark, bob, data):
    spark.range(2).createOrReplaceTempView("alice_view")
    # bob, even with alice's session id, sees none of alice's session.
    bob_as_alice = connect(ignis, BOB_KEY, session_id=spark.client._session_id)
    try:
        with pytest.raises(AnalysisException):
            bob_as_alice.table("alice_view").collect()
        with pytest.raises(SparkConnectGrpcException):
            bob_as_alice.read.parquet(data["orders"]).collect()
        with pytest.raises(SparkConnectGrpcException):
            bob_as_alice.read.csv("s3://sales-data/orders.csv").collect()
    finally:
        bob_as_alice.stop()
    bob.range(4).count()
    alice_ids = {j["id"] for j in jobs(ignis, ALICE_KEY)}
    bob_ids = {j["id"] for j in jobs(ignis, BOB_KEY)}
    assert bob_ids and not (alice_ids & bob_ids)


def test_wrong_key_is_refused(ignis):
    with pytest.raises(SparkConnectException) as e:
        connect(ignis, "not-a-key").range(1).collect()
    assert "API key" in str(e.value)


def test_python_udf_is_refused_with_a_way_out(spark):
    from pyspark.sql.functions import udf

    plus_one = udf(lambda x: x + 1, "long")
    with pytest.raises(Exception) as e:
        spark.range(3).select(plus_one("id")).collect()
    assert "WebAssembly" in str(e.value)


def test_session_release_frees_the_session(ignis):
    session = connect(ignis, ALICE_KEY, session_id=str(uuid.uuid4()))
    session.range(1).createOrReplaceTempView("gone")
    session_id = session.client._session_id
    session.stop()
    again = connect(ignis, ALICE_KEY, session_id=session_id)
    try:
        with pytest.raises(AnalysisException):
            again.table("gone").collect()
    finally:
        again.stop()


def build_orders_udfs():
    """The example UDF crate, built for wasm32-wasip2 as the Rust tests build it."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/ignis/target")) / "wasm-guests"
    subprocess.run(
        ["cargo", "build", "--quiet", "--release", "--target", "wasm32-wasip2", "--manifest-path",
         str(root / "examples/udfs/orders-udfs/Cargo.toml")],
        env={**os.environ, "CARGO_TARGET_DIR": str(target)},
        check=True,
    )
    return (target / "wasm32-wasip2/release/orders_udfs.wasm").read_bytes()


def test_wasm_udfs_by_name(ignis, spark, bob):
    import urllib.request

    wasm = build_orders_udfs()
    req = urllib.request.Request(
        f"{ignis['http']}/v1/udfs?name=orders-udfs", data=wasm, method="POST",
        headers={"Authorization": f"Bearer {ALICE_KEY}", "Content-Type": "application/octet-stream"},
    )
    urllib.request.urlopen(req).read()
    df = spark.createDataFrame([("  Kettle ",), ("TOASTER",)], ["product"])
    got = sorted(r[0] for r in df.select(F.call_function("normalize", F.col("product"))).collect())
    assert got == ["kettle", "toaster"]
    df.createOrReplaceTempView("products")
    assert sorted(r[0] for r in spark.sql("SELECT normalize(product) FROM products").collect()) == ["kettle", "toaster"]
    # Another tenant's components are not there for bob.
    with pytest.raises(AnalysisException) as e:
        bob.createDataFrame([("x",)], ["p"]).select(F.call_function("normalize", F.col("p"))).collect()
    assert "normalize" in str(e.value)


def test_hostile_paths_are_refused(spark, data):
    # The driver's own shuffle root (where caches live too), a climb out of
    # the tenant's directory, another tenant's directory, a foreign scheme.
    for path in [
        "s3://ignis/shuffle/",
        data["root"] + "/../bob",
        "file://" + data["bob_root"],
        "http://127.0.0.1:1/x.parquet",
    ]:
        with pytest.raises(SparkConnectException) as e:
            spark.read.parquet(path).collect()
        assert "may not" in str(e.value) or "outside" in str(e.value) or "overlaps" in str(e.value) or "scheme" in str(e.value) or ".." in str(e.value), path
    with pytest.raises(SparkConnectException):
        spark.range(1).write.mode("overwrite").parquet("s3://ignis/shuffle/_cache/")


def test_sql_with_args(spark, data):
    spark.read.parquet(data["orders"]).createOrReplaceTempView("orders_args")
    named = spark.sql(
        "SELECT count(*) AS n FROM orders_args WHERE country = :c AND quantity > :q", args={"c": "US", "q": 3}
    ).collect()[0].n
    positional = spark.sql("SELECT count(*) AS n FROM orders_args WHERE country = ? AND quantity > ?", args=["US", 3]).collect()[0].n
    by_hand = spark.sql("SELECT count(*) AS n FROM orders_args WHERE country = 'US' AND quantity > 3").collect()[0].n
    assert named == positional == by_hand > 0
    # An argument is a value, never SQL.
    assert spark.sql("SELECT count(*) AS n FROM orders_args WHERE country = :c", args={"c": "US' OR '1'='1"}).collect()[0].n == 0
    with pytest.raises(AnalysisException) as e:
        spark.sql("SELECT :missing", args={"other": 1}).collect()
    assert "UNBOUND_SQL_PARAMETER" in str(e.value)


def test_create_dataframe_from_pandas(spark):
    import pandas as pd

    pdf = pd.DataFrame({"k": [1, 2, 3, 4], "v": ["a", "b", None, "d"], "x": [0.5, 1.5, 2.5, None]})
    df = spark.createDataFrame(pdf)
    assert df.filter("k > 1").count() == 3
    back = df.orderBy("k").toPandas()
    assert back["v"].tolist()[:2] == ["a", "b"] and back["k"].tolist() == [1, 2, 3, 4]
    assert back["x"].isna().tolist() == [False, False, False, True]
