"""One benchmark workload on DuckDB, for `ignis-bench`: a process of its own per
workload, over the same files Ignis and DataFusion read. Prints one JSON object:
the time of each iteration (query only; the process start and the views are not
timed), the rows returned and the process's peak RSS."""

import argparse
import json
import os
import time

import duckdb


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tables", required=True, help="directory with one folder of Parquet files per TPC-H table")
    p.add_argument("--orders-csv", required=True, help="folder of the orders CSV files")
    p.add_argument("--sql", required=True, help="file with the query")
    p.add_argument("--write", help="write the result here as Parquet instead of fetching it")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--memory-limit", help="DuckDB's memory_limit, e.g. 8GiB")
    a = p.parse_args()

    con = duckdb.connect()
    con.execute(f"SET threads = {a.threads}")
    if a.memory_limit:
        con.execute(f"SET memory_limit = '{a.memory_limit}'")
    for table in sorted(os.listdir(a.tables)):
        folder = os.path.join(a.tables, table)
        if os.path.isdir(folder):
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{folder}/*.parquet')")
    con.execute(f"CREATE VIEW orders_csv AS SELECT * FROM read_csv('{a.orders_csv}/*.csv', header = true)")
    sql = open(a.sql).read().strip().rstrip(";")

    times, rows = [], 0
    for _ in range(a.iterations):
        start = time.perf_counter()
        if a.write:
            rows = con.execute(f"COPY ({sql}) TO '{a.write}' (FORMAT parquet)").fetchone()[0]
        else:
            rows = len(con.execute(sql).fetchall())
        times.append((time.perf_counter() - start) * 1000.0)
    print(json.dumps({"times_ms": times, "rows": rows, "peak_rss_bytes": peak_rss()}))


def peak_rss() -> int:
    """This process's peak resident memory. Not getrusage's ru_maxrss: Linux
    carries a parent's peak across fork and exec into it, so a child of the
    benchmark would report the benchmark's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    main()
