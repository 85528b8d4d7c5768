"""Feast: materialization throughput, Feast's stock path next to the bulk engine; online lookups.

For each size (default 7,043 and 1,000,000 users, one month): a drop is generated and loaded
into the snapshot tables (setup, not timed here: see bench_ingest), `feast apply` runs in-process,
then the month is materialized into a fresh sqlite online store (the embedded default) by:
- `feast stock`: Feast's own local engine (`batch_engine: local`): a proto per value, one INSERT
  per feature value;
- `bulk`: `materialize_month`, i.e. the repo's `BulkComputeEngine` (one `executemany` per batch
  of Arrow rows, see plugins/streamflow_mlops/extensions/feast/bulk_materialization.py), with 1 and 2 worker
  processes, then once more over the filled store (`bulk, update`: what a monthly re-run does).
Figures: seconds, users/s and rows/s (a row is one feature value of one user, as stored). Both
paths leave byte-identical tables (tests/unit/test_feature_repo.py). Goal: 1M users < 4 minutes.

Then online lookups on the materialized store, 1 and 100 users per call, p50/p99 of:
- `sdk`: `FeatureStore.get_online_features(FeatureService)`, what serving calls;
- `lookup`: `streamflow_mlops.features.online.online_features` (the SDK plus unknown/missing reporting);
- `floor`: one direct SQL read of the same sqlite rows (one UNION over the four view tables) and
  the protobuf parse, i.e. the least work that returns the same values.
And the point-in-time training set (`build_training_set`, Feast's historical retrieval).

Postgres: `STREAMFLOW_BENCH_DB_URL` (a server's `postgres` database), else a temporary embedded
server. Knobs: `BENCH_FEATURES_USERS=7043,1000000`, `BENCH_FEATURES_WORKERS=1,2`,
`BENCH_FEATURES_STOCK_MAX_USERS=1000000` (larger sizes skip Feast's stock path: ~15 min at 1M).
Run: `python -m bench.bench_features` (or `make bench`).
"""

from __future__ import annotations

import cProfile
import os
import pstats
import resource
import sqlite3
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import psycopg

from bench.harness import machine, postgres_server, scratch_database
from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY, FEATURE_GROUPS, FEATURE_NAMES
from streamflow_mlops.config.settings import FEATURE_SERVICE, REPO_ROOT, Settings
from streamflow_mlops.data.warehouse import create_schema, load_drop
from streamflow_mlops.extensions.feast.sqlite_store import feast_connection
from streamflow_mlops.features.materialize import materialization_window, materialize_month
from streamflow_mlops.features.online import online_features
from streamflow_mlops.features.parity import check_parity, parity_sample_users
from streamflow_mlops.features.retrieval import build_training_set
from streamflow_mlops.features.store import _feature_store, apply_repo, feature_store, repo_config
from streamflow_mlops.synthetic.generate import DropSpec, write_drop

MONTH = Month(0)
LOOKUP_CALLS = {1: 500, 100: 100}


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

    store = feature_store(settings)
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


def variant_settings(db_url: str, state_dir: Path) -> Settings:
    return Settings(
        repo_root=REPO_ROOT,
        state_dir=state_dir,
        drops_dir=state_dir,
        db_url_override=db_url,
        mlflow_tracking_uri_override=None,
        embedded_pg_port=0,
        online_store_override=None,
    )


def fresh_online_tables(store) -> None:
    """Create the views' sqlite tables in this store's (new) file.

    Not `feast apply`: the registry is shared by the variants, and its plan would drop the tables
    of the file it last recorded (the previous variant's) to create this one's.
    """
    store._get_provider().update_infra(
        store.project,
        tables_to_delete=[],
        tables_to_keep=store.list_feature_views(),
        entities_to_delete=[],
        entities_to_keep=store.list_entities(),
        partial=False,
    )
    feast_connection(store).execute("PRAGMA journal_mode = WAL")


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the worker processes), not Postgres's."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@contextmanager
def clock():
    """Wall and CPU seconds of the block: on a shared machine the wall time says how busy it was."""
    spent = {}
    wall, cpu = time.perf_counter(), cpu_seconds()
    yield spent
    spent.update(wall=time.perf_counter() - wall, cpu=cpu_seconds() - cpu)


def materialize_line(label: str, users: int, spent: dict[str, float]) -> str:
    seconds, rows = spent["wall"], users * len(FEATURE_NAMES)
    return (
        f"  materialize {users:>9,} users  {label:<19} {seconds:8.1f} s (cpu {spent['cpu']:6.1f} s)  "
        f"{users / seconds:9,.0f} users/s  {rows / seconds:10,.0f} rows/s  "
        f"(1M users in ~{1_000_000 / (users / seconds) / 60:.1f} min)"
    )


def bench_materialization(
    db_url: str, workdir: Path, users: int, workers_list: list[int]
) -> tuple[list[str], Settings]:
    """Feast's stock engine, then the bulk engine per worker count, each into a new sqlite file."""
    from feast import FeatureStore

    lines = []
    as_of = MONTH.as_of_ts
    stock_max = int(os.environ.get("BENCH_FEATURES_STOCK_MAX_USERS", "1000000"))
    if users <= stock_max:
        settings = variant_settings(db_url, workdir / f"stock_{users}")
        config = repo_config(settings)
        config.batch_engine_config = "local"
        settings.state_dir.mkdir(parents=True)
        store = FeatureStore(repo_path=str(settings.feature_repo), config=config)
        fresh_online_tables(store)
        ttl = store.list_feature_views()[0].ttl
        start, end = materialization_window(as_of, ttl)
        with clock() as spent:
            store.materialize(start_date=start, end_date=end)
        lines.append(materialize_line("feast stock", users, spent))
        print(lines[-1], flush=True)
    else:
        lines.append(f"  materialize {users:>9,} users  feast stock       skipped (BENCH_FEATURES_STOCK_MAX_USERS)")
    for workers in workers_list:
        settings = variant_settings(db_url, workdir / f"bulk_{users}_w{workers}")
        settings.state_dir.mkdir(parents=True)
        fresh_online_tables(feature_store(settings))
        with clock() as spent:
            materialize_month(MONTH, settings, workers=workers)
        lines.append(materialize_line(f"bulk, workers={workers}", users, spent))
        print(lines[-1], flush=True)
    with clock() as spent:
        materialize_month(MONTH, settings, workers=workers_list[-1])
    lines.append(materialize_line(f"bulk update, workers={workers_list[-1]}", users, spent))
    print(lines[-1], flush=True)
    check_parity(MONTH, settings=settings)
    return lines, settings


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
        apply_repo(variant_settings(db_url, workdir / f"apply_{users}"))
        materialized, settings = bench_materialization(db_url, workdir, users, workers_list)
        lines += materialized

        started = time.perf_counter()
        training = build_training_set(MONTH, settings=settings)
        seconds = time.perf_counter() - started
        lines.append(
            f"  training set {len(training):>8,} users x {len(FEATURE_NAMES)} features (PIT join)  {seconds:8.1f} s"
        )
        print(lines[-1], flush=True)

        with psycopg.connect(db_url) as conn:
            sample = parity_sample_users(conn, MONTH.as_of_ts, 100)
        store = feature_store(settings)
        service = store.get_feature_service(FEATURE_SERVICE, allow_cache=True)
        floor = floor_reader(settings)
        readers = {
            "sdk": lambda batch: store.get_online_features(
                features=service, entity_rows=[{ENTITY: u} for u in batch]
            ).to_dict(),
            "lookup": lambda batch: online_features(batch, settings=settings),
            "floor": floor,
        }
        assert floor(sample[:3]) == {u: online_features([u], settings=settings).values[u] for u in sample[:3]}
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
        _feature_store.cache_clear()
    return lines


def main() -> None:
    sizes = [int(s) for s in os.environ.get("BENCH_FEATURES_USERS", "7043,1000000").split(",")]
    workers_list = [int(s) for s in os.environ.get("BENCH_FEATURES_WORKERS", "1,2").split(",")]
    print(f"machine: {machine()}")
    print(f"online store: sqlite (embedded default); month {MONTH}; {len(FEATURE_NAMES)} features in 4 views")
    print("(machine load matters: other processes may share these cores; the load average is printed above)")
    lines = []
    with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp, postgres_server(Path(tmp)) as server:
        for users in sizes:
            lines += bench_size(server, Path(tmp), users, workers_list)
    print("\nsummary")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
