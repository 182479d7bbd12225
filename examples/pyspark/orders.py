"""The orders job as PySpark code, run unchanged against Ignis through Spark Connect.

    scripts/ignis serve --local-executors 2 --api-keys "me:local-dev-key" \
        --allow-local-files "$PWD/examples" --spark-connect 127.0.0.1:15002 &
    python examples/pyspark/orders.py   # with pyspark-client installed

IGNIS_REMOTE overrides the address (and key) of the server.
"""

import os
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

remote = os.environ.get("IGNIS_REMOTE", "sc://127.0.0.1:15002/;x-api-key=local-dev-key")
here = Path(__file__).resolve().parent.parent
spark = SparkSession.builder.remote(remote).getOrCreate()

orders = spark.read.csv(str(here / "orders" / "data"), header=True, inferSchema=True)
us = orders.filter(orders.country == "US")
summary = (
    us.groupBy("product")
    .agg(
        F.count("*").alias("orders"),
        F.sum("quantity").alias("units"),
        F.round(F.sum(F.col("price") * F.col("quantity")), 2).alias("revenue"),
    )
    .orderBy(F.desc("revenue"))
)
summary.show()
summary.write.mode("overwrite").parquet(str(here / "pyspark" / "output"))
print("wrote", spark.read.parquet(str(here / "pyspark" / "output")).count(), "rows")
