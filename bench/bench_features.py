"""Feast: materialization throughput and online lookup latency, next to the floor.

For each size (default 7,043 and 1,000,000 users, one month): a drop is generated and loaded
into the snapshot tables (setup, not timed here: see bench_ingest), `feast apply` runs in-process,
then `materialize_month` writes the month into the sqlite online store (the embedded default)
with 1 and with 2 worker processes; figures are users/s and feature values/s. Goal: 1,000,000
users in under 4 minutes.

Online lookups on the materialized store, 1 and 100 users per call, p50/p99 of:
- `sdk`: `FeatureStore.get_online_features(FeatureService)`, what serving calls;
- `lookup`: `streamflow_mlops.features.online_features` (the SDK plus unknown/missing reporting);
- `floor`: one direct SQL read of the same sqlite rows (one UNION over the four view tables) and
  the protobuf parse, i.e. the least work that returns the same values.
Then a profile of the SDK's 1-user call, to say where the time above the floor goes.

Postgres: `STREAMFLOW_BENCH_DB_URL` (a server's `postgres` database), else a temporary embedded
server. Knobs: `BENCH_FEATURES_USERS=7043,1000000`, `BENCH_FEATURES_WORKERS=1,2`.
Run: `python -m bench.bench_features` (or `make bench`).
"""

from __future__ import annotations

import cProfile
import os
import platform
import pstats
import socket
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

import psycopg  # noqa: E402
from streamflow_mlops import embedded, features  # noqa: E402
from streamflow_mlops.generate import DropSpec, write_drop  # noqa: E402
from streamflow_mlops.schema import ENTITY, FEATURE_GROUPS, FEATURE_NAMES  # noqa: E402
from streamflow_mlops.settings import FEATURE_SERVICE, REPO_ROOT, Settings, replace_database  # noqa: E402
from streamflow_mlops.warehouse import create_schema, load_drop  # noqa: E402

MONTH = "month_000"
LOOKUP_CALLS = {1: 500, 100: 100}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    load = ", load avg {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else ""
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}{load}"


@contextmanager
def postgres_server(workdir: Path):
    """URL of a server's `postgres` database: the given one, or an embedded one for the run."""
    external = os.environ.get("STREAMFLOW_BENCH_DB_URL")
    if external:
        yield replace_database(external, "postgres")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(
        repo_root=REPO_ROOT,
        state_dir=workdir / "pg",
        drops_dir=workdir,
        db_url_override=None,
        mlflow_tracking_uri_override=None,
        embedded_pg_port=port,
        online_store_override=None,
    )
    url = embedded.start_embedded(settings)
    try:
        yield replace_database(url, "postgres")
    finally:
        embedded.stop_embedded(settings)


@contextmanager
def scratch_database(server: str):
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield replace_database(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(call, batches: list[list[str]]) -> tuple[float, float]:
    """p50 and p99 in ms of `call(batch)` over the batches, after a warm-up."""
    for batch in batches[:10]:
        call(batch)
    samples = []
    for batch in batches:
        started = time.perf_counter()
        call(batch)
        samples.append((time.perf_counter() - started) * 1000)
    return percentile(samples, 0.5), percentile(samples, 0.99)


def floor_reader(settings: Settings):
    """The least work returning the same values: one SQL read of the rows, protobuf parse."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import feast_value_type_to_python_type

    store = features.feature_store(settings)
    conn = sqlite3.connect(store.config.online_store.path, check_same_thread=False)
    tables = [f"{store.project}_{g.name}" for g in FEATURE_GROUPS]

    def read(users: list[str]) -> dict[str, dict]:
        keys = {
            serialize_entity_key(EntityKey(join_keys=[ENTITY], entity_values=[Value(string_val=u)]), 3): u
            for u in users
        }
        marks = ",".join("?" * len(keys))
        sql = " UNION ALL ".join(
            f"SELECT entity_key, feature_name, value FROM {t} WHERE entity_key IN ({marks})" for t in tables
        )
        out: dict[str, dict] = defaultdict(dict)
        for key, name, blob in conn.execute(sql, list(keys) * len(tables)):
            value = Value()
            value.ParseFromString(blob)
            out[keys[key]][name] = feast_value_type_to_python_type(value)
        return out

    return read


def sdk_profile(store, service, users: list[str], calls: int = 300) -> list[tuple[str, float]]:
    """Share of the SDK's 1-user call spent in its main steps (cumulative time, profiled)."""
    steps = {
        "online_read (SQL per view)": "online_read",
        "response build (protos)": "_populate_response_from_feature_data",
        "entity prep / dedup": "_prepare_entities_to_read_from_online_store",
        "unique entities per view": "_get_unique_entities",
        "feature types per call": "_build_feature_types",
        "registry / feature refs": "_get_online_request_context",
    }
    profile = cProfile.Profile()
    profile.enable()
    for i in range(calls):
        store.get_online_features(features=service, entity_rows=[{ENTITY: users[i % len(users)]}])
    profile.disable()
    stats = pstats.Stats(profile).stats
    total = sum(v[3] for k, v in stats.items() if k[2] == "get_online_features" and "feature_store" in k[0])
    shares = []
    for label, func in steps.items():
        cumulative = sum(v[3] for k, v in stats.items() if k[2] == func)
        if cumulative:
            shares.append((label, cumulative / total))
    return shares


def bench_size(server: str, workdir: Path, users: int, workers_list: list[int]) -> list[str]:
    lines = []
    with scratch_database(server) as db_url:
        started = time.perf_counter()
        folder = write_drop(DropSpec(0, users=users), workdir / f"drops_{users}")
        with psycopg.connect(db_url) as conn:
            create_schema(conn)
            with conn.transaction():
                load_drop(conn, folder, DropSpec(0).as_of)
        print(f"  setup {users:,} users: generated and loaded in {time.perf_counter() - started:.0f}s", flush=True)
        settings = Settings(
            repo_root=REPO_ROOT,
            state_dir=workdir / f"state_{users}",
            drops_dir=workdir,
            db_url_override=db_url,
            mlflow_tracking_uri_override=None,
            embedded_pg_port=0,
            online_store_override=None,
        )
        features.apply_repo(settings)
        for workers in workers_list:
            report = features.materialize_month(MONTH, settings, workers=workers)
            seconds = report["seconds"]
            lines.append(
                f"  materialize {users:>9,} users  workers={workers}  {seconds:8.1f} s  "
                f"{users / seconds:9,.0f} users/s  {users * len(FEATURE_NAMES) / seconds:10,.0f} values/s"
                + (f"  (1M users in ~{1_000_000 / (users / seconds) / 60:.1f} min)" if users < 1_000_000 else "")
            )
            print(lines[-1], flush=True)
        features.check_parity(MONTH, settings=settings)

        with psycopg.connect(db_url) as conn:
            sample = features.parity_sample_users(conn, features.month_as_of_ts(MONTH), 100)
        store = features.feature_store(settings)
        service = store.get_feature_service(FEATURE_SERVICE, allow_cache=True)
        floor = floor_reader(settings)
        readers = {
            "sdk": lambda batch: store.get_online_features(
                features=service, entity_rows=[{ENTITY: u} for u in batch]
            ).to_dict(),
            "lookup": lambda batch: features.online_features(batch, settings=settings),
            "floor": floor,
        }
        assert floor(sample[:3]) == {u: features.online_features([u], settings=settings).values[u] for u in sample[:3]}
        for size, calls in LOOKUP_CALLS.items():
            batches = [[sample[i % len(sample)]] for i in range(calls)] if size == 1 else [sample[:size]] * calls
            figures = {name: timed(read, batches) for name, read in readers.items()}
            row = "  ".join(f"{name} p50 {p50:6.2f} p99 {p99:6.2f}" for name, (p50, p99) in figures.items())
            lines.append(f"  lookup {size:>3} user{'s' if size > 1 else ' '} ({users:,} in store)  ms: {row}")
            print(lines[-1], flush=True)
        shares = sdk_profile(store, service, sample)
        split = ", ".join(f"{k} {v:.0%}" for k, v in shares)
        lines.append(f"  SDK 1-user call, cumulative share of time (profiled; steps may nest): {split}")
        print(lines[-1], flush=True)
        features._feature_store.cache_clear()
    return lines


def main() -> None:
    sizes = [int(s) for s in os.environ.get("BENCH_FEATURES_USERS", "7043,1000000").split(",")]
    workers_list = [int(s) for s in os.environ.get("BENCH_FEATURES_WORKERS", "1,2").split(",")]
    print(f"machine: {machine()}")
    print(f"online store: sqlite (embedded default); month {MONTH}; {len(FEATURE_NAMES)} features in 4 views")
    lines = []
    with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp, postgres_server(Path(tmp)) as server:
        for users in sizes:
            lines += bench_size(server, Path(tmp), users, workers_list)
    print("\nsummary")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
