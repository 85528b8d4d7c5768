"""Ingestion throughput: GE validation and the COPY load against the naive pandas `to_sql` load.

For 7,043 and 1,000,000 users (six CSVs, one row per user each): seconds and rows/s of
validating the drop with the committed GE suites (`validate_drop`), of loading it with
`load_drop` (each CSV COPYed into a fresh month table, primary keys built once, the four
snapshot tables joined from them, the month's partitions swapped in; one transaction), and of
the naive load (`pd.read_csv` + `DataFrame.to_sql` into plain primary-keyed copies of the raw
tables, no snapshots). rows = users x 6 raw tables for every step.
Goal: a 1M-user month validated and loaded in under 2 minutes, the load at least 5x the naive.

Postgres: `STREAMFLOW_BENCH_DB_URL` (a server's `postgres` database), else a temporary embedded
server. Sizes: `BENCH_INGEST_USERS=7043,1000000` (default). The machine is shared: the load
average is printed before and after, read the figures with it.
Run: `python -m bench.bench_ingest` (or `make bench`).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psycopg
import sqlalchemy

from bench.harness import machine, postgres_server, scratch_database
from streamflow_mlops.config.schema import RAW_TABLES
from streamflow_mlops.config.settings import REPO_ROOT, WAREHOUSE_SCHEMA, with_driver
from streamflow_mlops.data.validation import validate_drop
from streamflow_mlops.data.warehouse import create_schema, load_drop
from streamflow_mlops.synthetic.generate import DropSpec, write_drop

NAIVE_SCHEMA = "naive"
PANDAS_DTYPES = {"str": "string", "int": "int64", "float": "float64", "bool": "bool"}


def copy_load(url: str, folder: Path, spec: DropSpec) -> float:
    with psycopg.connect(url) as conn:
        create_schema(conn)
        started = time.perf_counter()
        with conn.transaction():
            load_drop(conn, folder, spec.as_of)
        return time.perf_counter() - started


def naive_load(url: str, folder: Path, spec: DropSpec) -> float:
    """What a first version would do: typed read_csv, then to_sql into plain (unpartitioned)
    tables keyed by (user_id, as_of), the warehouse's raw tables before partitioning."""
    with psycopg.connect(url) as conn:
        create_schema(conn)
        conn.execute(f"CREATE SCHEMA {NAIVE_SCHEMA}")
        for t in RAW_TABLES:
            conn.execute(
                f"CREATE TABLE {NAIVE_SCHEMA}.{t.name} (LIKE {WAREHOUSE_SCHEMA}.{t.name}, PRIMARY KEY (user_id, as_of))"
            )
    engine = sqlalchemy.create_engine(with_driver(url, "psycopg"))
    started = time.perf_counter()
    with engine.begin() as conn:
        for t in RAW_TABLES:
            dtypes = {"user_id": "string"} | {c.name: PANDAS_DTYPES[c.dtype] for c in t.columns}
            frame = pd.read_csv(folder / t.file, dtype=dtypes)
            frame.insert(1, "as_of", spec.as_of)
            frame.to_sql(t.name, conn, schema=NAIVE_SCHEMA, if_exists="append", index=False)
    engine.dispose()
    return time.perf_counter() - started


@dataclass
class Figures:
    users: int
    validation: float
    load: float
    naive: float

    @property
    def rows(self) -> int:
        return self.users * len(RAW_TABLES)


def measure(server: str, workdir: Path, users: int) -> Figures:
    """Print each step's figures as soon as it is measured (the naive 1M load takes minutes)."""
    spec = DropSpec(0, users=users)
    folder = write_drop(spec, workdir / f"u{users}")
    rows = users * len(RAW_TABLES)

    def show(step: str, seconds: float) -> None:
        print(f"{users:>9,}  {step:<44} {rows:>10,} {seconds:>8.1f} {rows / seconds:>11,.0f}", flush=True)

    validation = validate_drop(folder, REPO_ROOT / "expectations")
    assert validation.success, validation.reasons
    show("GE validation (2 views, 6 suites)", validation.seconds)
    with scratch_database(server) as url:
        load = copy_load(url, folder, spec)
    show("COPY load (raw + snapshots, 1 txn)", load)
    with scratch_database(server) as url:
        naive = naive_load(url, folder, spec)
    show("naive load: read_csv + to_sql (raw only)", naive)
    return Figures(users, validation.seconds, load, naive)


def summary(figures: list[Figures]) -> None:
    """Side by side: throughput of each step, the load's ratio to the naive one, the month's total."""
    print(
        f"\n{'users':>9}  {'validation rows/s':>17}  {'COPY load rows/s':>16}  {'naive to_sql rows/s':>19}"
        f"  {'COPY/naive':>10}  {'validate+load s':>15}  {'validate+naive s':>16}"
    )
    for f in figures:
        print(
            f"{f.users:>9,}  {f.rows / f.validation:>17,.0f}  {f.rows / f.load:>16,.0f}  {f.rows / f.naive:>19,.0f}"
            f"  {f.naive / f.load:>9.1f}x  {f.validation + f.load:>15.1f}  {f.validation + f.naive:>16.1f}"
        )


def load_average() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    sizes = [int(s) for s in os.environ.get("BENCH_INGEST_USERS", "7043,1000000").split(",")]
    print(f"machine: {machine()}")
    print(f"{'users':>9}  {'step':<44} {'rows':>10} {'seconds':>8} {'rows/s':>11}")
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp, postgres_server(Path(tmp)) as server:
        figures = [measure(server, Path(tmp), users) for users in sizes]
    summary(figures)
    print(f"after: {load_average()}")


if __name__ == "__main__":
    main()
