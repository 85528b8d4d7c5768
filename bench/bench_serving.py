"""Serving speed: the churn bento against the seeds' design and the in-process floor.

A private stack (embedded Postgres on a free port, temp state, sqlite MLflow): one generated month
(BENCH_SERVING_USERS users, default 7,043) loaded, materialized, an HGB champion trained,
registered and imported. Then, side by side in one run, on 127.0.0.1:

- `seeds`: the seeds' design, a FastAPI app that per request calls the Feast SDK and an
  `mlflow.pyfunc` model (uvicorn, one worker);
- `bento`: `bentoml serve` of bentos/churn_service (micro-batched /predict);
- `floor`: no HTTP, the same features read with one SQL query and the pipeline called in-process,
  one user per call (and 32 per call, the batched floor).

Each HTTP target gets a bounded closed-loop load (keep-alive connections on one asyncio loop in a
separate load process) at concurrency 1, 8 and 32 for BENCH_SERVING_SECONDS seconds (default 20):
requests/s, p50, p99, errors, the CPU the server's processes and the load generator spent per
request, and the 1-minute load average (other work on the machine shows there).
Run: `python -m bench serving` (or `make bench`).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import machine

REPO = Path(__file__).resolve().parents[1]

CONCURRENCY = (1, 8, 32)
SECONDS = float(os.environ.get("BENCH_SERVING_SECONDS", "20"))
USERS = int(os.environ.get("BENCH_SERVING_USERS", "7043"))
# Empty: the service's own default (one worker per core, up to 4).
BENTO_WORKERS = os.environ.get("BENCH_SERVING_WORKERS", "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ the seeds' design


def seed_app():
    """The seeds' service: FastAPI, Feast SDK read and pyfunc predict on every request."""
    import mlflow.pyfunc
    import pandas as pd
    from fastapi import FastAPI, HTTPException

    from streamflow_mlops.config.settings import FEATURE_SERVICE, get_settings
    from streamflow_mlops.features.store import feature_store

    settings = get_settings()
    store = feature_store(settings)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    model = mlflow.pyfunc.load_model("models:/streamflow_churn@champion")
    app = FastAPI()

    @app.post("/predict")
    def predict(body: dict) -> dict:
        online = store.get_online_features(
            features=store.get_feature_service(FEATURE_SERVICE), entity_rows=[{"user_id": body["user_id"]}]
        ).to_dict()
        online.pop("user_id")
        if any(v[0] is None for v in online.values()):
            raise HTTPException(404, "unknown user")
        scores = model.predict(pd.DataFrame(online))
        probability = float(scores[0][1] if getattr(scores, "ndim", 1) == 2 else scores[0])
        return {"user_id": body["user_id"], "churn_probability": probability}

    return app


# ------------------------------------------------------------------------------ load generator


def request_bytes(user_id: str) -> bytes:
    body = json.dumps({"user_id": user_id}).encode()
    head = (
        "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _client(port: int, requests: list[bytes], offset: int, deadline: float, out: list, errors: list) -> None:
    """One keep-alive connection in a closed loop: send, read the head and Content-Length bytes, repeat."""
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    while time.perf_counter() < deadline:
        payload = requests[i % len(requests)]
        i += 7
        started = time.perf_counter()
        try:
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (int(line[15:]) for line in head.split(b"\r\n") if line[:15].lower() == b"content-length:"), 0
            )
            await reader.readexactly(length)
            ok = head[9:12] == b"200"
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            ok = False
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        out.append(time.perf_counter() - started)
        if not ok:
            errors.append(1)
    writer.close()


def load_process(port: int, users: list[str], concurrency: int, seconds: float) -> dict:
    """Run in a child process: `concurrency` keep-alive connections on one event loop for `seconds`.

    Raw HTTP/1.1 over asyncio streams (uvloop when installed) costs the generator about 0.1 ms of
    CPU per request, a tenth of what threads with http.client cost, so the load it steals from
    the server on a 2-core machine stays small; that CPU is measured and printed.
    """
    import asyncio

    requests = [request_bytes(user) for user in users]
    latencies: list[float] = []
    errors: list[int] = []

    async def run() -> float:
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        await asyncio.gather(
            *(_client(port, requests, k * 977, deadline, latencies, errors) for k in range(concurrency))
        )
        return time.perf_counter() - started

    try:
        import uvloop

        elapsed = uvloop.run(run())
    except ImportError:
        elapsed = asyncio.run(run())
    return {"elapsed": elapsed, "latencies": latencies, "errors": len(errors), "cpu_s": time.process_time()}


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children so far."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_load(port: int, users: list[str], concurrency: int, seconds: float, server_pid: int | None = None) -> dict:
    """Closed-loop load from a separate interpreter, so the generator's GIL isn't the server's."""
    code = (
        "import json, sys; from bench.bench_serving import load_process; "
        "a = json.load(sys.stdin); json.dump(load_process(a['port'], a['users'], a['c'], a['s']), sys.stdout)"
    )
    payload = json.dumps({"port": port, "users": users, "c": concurrency, "s": seconds})
    server_cpu = process_tree_cpu(server_pid) if server_pid else 0.0
    done = subprocess.run(
        [sys.executable, "-c", code], input=payload, capture_output=True, text=True, cwd=REPO, timeout=seconds + 120
    )
    server_cpu = process_tree_cpu(server_pid) - server_cpu if server_pid else float("nan")
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    result = json.loads(done.stdout)
    stats = summarize(result["latencies"], result["elapsed"], result["errors"])
    requests = max(1, stats["requests"])
    stats["server_cpu_ms"] = server_cpu * 1000 / requests
    stats["load_cpu_ms"] = result["cpu_s"] * 1000 / requests
    stats["loadavg"] = os.getloadavg()[0]
    return stats


def summarize(latencies: list[float], elapsed: float, errors: int) -> dict:
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")

    return {
        "requests": len(ordered),
        "rps": len(ordered) / elapsed if elapsed else 0.0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "errors": errors,
    }


def wait_ready(port: int, path: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready on :{port}: {log.read_text()[-3000:]}")


def warm_up(port: int, users: list[str]) -> None:
    run_load(port, users, 4, 3)


# ------------------------------------------------------------------------------ stack


def build_stack(home: Path) -> dict:
    """Embedded Postgres + one month loaded, materialized, a champion trained, registered and imported."""
    import psycopg

    env = {
        "STREAMFLOW_HOME": str(home / "state"),
        "STREAMFLOW_DROPS_DIR": str(home / "drops"),
        "STREAMFLOW_PG_EMBEDDED_PORT": str(free_port()),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "BENTOML_HOME": str(home / "bentoml"),
    }
    for name in ("STREAMFLOW_DB_URL", "STREAMFLOW_FEAST_ONLINE_STORE"):
        os.environ.pop(name, None)
    os.environ.update(env)

    from streamflow_mlops.config.settings import FEATURE_SERVICE, get_settings
    from streamflow_mlops.data.warehouse import create_schema, load_drop
    from streamflow_mlops.features.materialize import materialize_month
    from streamflow_mlops.features.retrieval import build_training_set
    from streamflow_mlops.features.store import apply_repo, feature_names
    from streamflow_mlops.model.tracking import configure_mlflow, log_trained_model
    from streamflow_mlops.model.training import train_model
    from streamflow_mlops.pipelines.champion import set_champion
    from streamflow_mlops.platform.embedded import up
    from streamflow_mlops.synthetic.generate import DropSpec, write_drop

    get_settings.cache_clear()
    settings = get_settings()
    up(settings)
    spec = DropSpec(0, users=USERS)
    folder = write_drop(spec, settings.drops_dir)
    with psycopg.connect(settings.db_url) as conn:
        create_schema(conn)
        with conn.transaction():
            load_drop(conn, folder, spec.as_of)
        users = [r[0] for r in conn.execute("SELECT user_id FROM streamflow.users ORDER BY md5(user_id)")]
    apply_repo(settings)
    materialize_month("month_000", settings)
    trained = train_model(build_training_set("month_000"), 42, features=feature_names())
    logged = log_trained_model(
        trained, month="month_000", as_of=spec.as_of, feature_service=FEATURE_SERVICE, settings=settings
    )
    set_champion(configure_mlflow(settings), logged["version"], None, {"decision": "bench"})
    return {"settings": settings, "env": {**os.environ, **env}, "users": users, "version": logged["version"]}


# ------------------------------------------------------------------------------ floor


def floor(settings, users: list[str], seconds: float) -> dict:
    """In-process: one SQL read of the features + one model call per user (and per 32 users).

    The model call is the service's own (`PipelineModel.predict_proba`, the array path when the
    pipeline compiles); the DataFrame path through the sklearn pipeline is timed beside it.
    """
    from streamflow_mlops.serving.champion import load_champion, newest_imported_tag
    from streamflow_mlops.serving.feature_reader import build_reader

    reader = build_reader(settings)
    champion = load_champion(newest_imported_tag())
    model, fs = champion.model, champion.feature_service
    reader.read(users[:32], fs)

    latencies, read_s, model_s, frame_s = [], 0.0, 0.0, 0.0
    deadline = time.perf_counter() + seconds / 2
    i = 0
    while time.perf_counter() < deadline:
        u = users[i % len(users)]
        t0 = time.perf_counter()
        rows = reader.read([u], fs)
        t1 = time.perf_counter()
        model.predict_proba([rows[u]])
        t2 = time.perf_counter()
        latencies.append(t2 - t0)
        read_s += t1 - t0
        model_s += t2 - t1
        if i % 10 == 0:
            t3 = time.perf_counter()
            model.frame_predict_proba([rows[u]])
            frame_s += time.perf_counter() - t3
        i += 1
    single_stats = summarize(latencies, sum(latencies), 0)
    batch_lat = []
    deadline = time.perf_counter() + seconds / 2
    while time.perf_counter() < deadline:
        batch = [users[(i + k) % len(users)] for k in range(32)]
        t0 = time.perf_counter()
        rows = reader.read(batch, fs)
        model.predict_proba([rows[u] for u in batch])
        batch_lat.append(time.perf_counter() - t0)
        i += 32
    return {
        "single": single_stats,
        "array_path": model.fast is not None,
        "read_ms": read_s / len(latencies) * 1000,
        "model_ms": model_s / len(latencies) * 1000,
        "frame_model_ms": frame_s / len(range(0, len(latencies), 10)) * 1000,
        "batch32_per_user_ms": statistics.mean(batch_lat) / 32 * 1000,
        "classifier": type(model.pipeline[-1]).__name__,
    }


# ------------------------------------------------------------------------------ main


def serve(cmd: list[str], env: dict, port: int, ready_path: str, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    wait_ready(port, ready_path, proc, log)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    print(f"machine: {machine()}")
    print(f"users {USERS:,}, {SECONDS:.0f}s per level, bento workers {BENTO_WORKERS or 'service default'}")
    with tempfile.TemporaryDirectory(prefix="bench_serving_") as tmp:
        home = Path(tmp)
        started = time.perf_counter()
        stack = build_stack(home)
        print(f"stack ready in {time.perf_counter() - started:.0f}s (champion v{stack['version']})")
        users = stack["users"][:2000]
        bin_dir = Path(sys.executable).parent
        results: dict[str, dict[int, dict]] = {}
        targets = {
            "seeds": (
                [
                    str(bin_dir / "uvicorn"),
                    "--factory",
                    "bench.bench_serving:seed_app",
                    "--host",
                    "127.0.0.1",
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                "/docs",
            ),
            "bento": (
                [str(bin_dir / "bentoml"), "serve", "bentos.churn_service.service:ChurnService"],
                "/readyz",
            ),
        }
        env = {**stack["env"], **({"STREAMFLOW_SERVICE_WORKERS": BENTO_WORKERS} if BENTO_WORKERS else {})}
        try:
            for name, (cmd, ready) in targets.items():
                port = free_port()
                proc = serve([*cmd, "--port", str(port)], env, port, ready, home / f"{name}.log")
                try:
                    warm_up(port, users)
                    results[name] = {c: run_load(port, users, c, SECONDS, proc.pid) for c in CONCURRENCY}
                finally:
                    stop(proc)
            floor_stats = floor(stack["settings"], users, SECONDS)
        finally:
            from streamflow_mlops.platform.embedded import stop_embedded

            stop_embedded(stack["settings"])

    print(
        f"\n{'target':<8}{'conc':>6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'server CPU ms/req':>19}{'loadgen CPU ms/req':>20}{'load avg':>10}"
    )
    for name, by_c in results.items():
        for c, r in by_c.items():
            print(
                f"{name:<8}{c:>6}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>8}"
                f"{r['server_cpu_ms']:>19.2f}{r['load_cpu_ms']:>20.2f}{r['loadavg']:>10.1f}"
            )
    single = floor_stats["single"]
    print(f"{'floor':<8}{1:>6}{single['rps']:>9.0f}{single['p50_ms']:>9.2f}{single['p99_ms']:>9.2f}{0:>8}")
    print(
        f"\nfloor per user: read {floor_stats['read_ms']:.2f} ms + model {floor_stats['model_ms']:.2f} ms"
        f" ({floor_stats['classifier']}, {'array path' if floor_stats['array_path'] else 'DataFrame path'};"
        f" the sklearn pipeline on a one-row DataFrame: {floor_stats['frame_model_ms']:.2f} ms);"
        f" 32 per call: {floor_stats['batch32_per_user_ms']:.3f} ms per user"
    )
    seeds32, bento32 = results["seeds"][32]["rps"], results["bento"][32]["rps"]
    floor_ms = 1000 / single["rps"]
    print(
        f"bento vs seeds at c=32: {bento32 / seeds32:.1f}x requests/s; bento p99 at c=8:"
        f" {results['bento'][8]['p99_ms']:.1f} ms; bento server CPU per request at c=32:"
        f" {results['bento'][32]['server_cpu_ms']:.2f} ms = {results['bento'][32]['server_cpu_ms'] / floor_ms:.1f}x"
        f" the floor's {floor_ms:.2f} ms per single call"
    )


if __name__ == "__main__":
    main()
