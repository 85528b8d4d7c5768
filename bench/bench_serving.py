"""Serving speed and tail: the churn bento against the seeds' design and BentoML's own batching.

A private stack (embedded Postgres on a free port, temp state, sqlite MLflow): one generated month
(BENCH_SERVING_USERS users, default 7,043) loaded, materialized, an HGB champion trained,
registered and imported. Then, side by side in one run, on 127.0.0.1:

- `seeds`: the seeds' design, a FastAPI app that per request calls the Feast SDK and an
  `mlflow.pyfunc` model (uvicorn, one worker);
- `bento`: `bentoml serve` of bentos/churn_service (hand-written micro-batcher on /predict);
- `batchable`: the same runtime behind `@bentoml.api(batchable=True)` (bench/batchable_service.py),
  BentoML's adaptive batching instead of the micro-batcher;
- `stock_timers`: the bento with BentoML's own request timeout middleware
  (STREAMFLOW_SERVICE_CANCEL_REQUEST_TIMERS=0), one live timer left per request, instead of
  extensions/bentoml.py's;
- `shadow`: the bento while the registry alias `shadow` names a second version (a logistic
  regression): each /predict also scored by it off the request path (serving/shadow.py); its
  p50/p99 beside `bento`'s at the same load is the shadow's cost;
- `floor`: no HTTP, the same features read with one SQL query and the pipeline called in-process.

`python -m bench serving --timers` runs only the timer comparison: `bento`, `stock_timers`, then
`bento` again (the noise), at concurrency 8 and 32, with the GC pause time each reported.

`python -m bench serving --shadow` runs only the shadow comparison, short: `bento`, `shadow`, then
`bento` again (`bento_again`: how far two runs of the same server differ here, the noise the
shadow's cost must be read against), at concurrency 8 and 32.

Load: wrk (C, keep-alive; `apt-get install wrk`) at concurrency 1, 8 and 32 for
BENCH_SERVING_SECONDS seconds (default 20) each, with a Lua script that rotates real user ids and
reports p50 / p99 / p99.9; without wrk, a Python asyncio client (said so in the output; it tops
out sooner). Printed per level: requests/s, p50, p99, p99.9, p99/p50, errors, the server's CPU per
request, how its workers split the connections (sampled mid-run) and shared the CPU (busiest over
mean), the GC pause time its
workers reported (/metrics, with how many of them answered), and the 1-minute load average.
Whether a `make demo` stack is running on the machine is printed too (its processes compete for
the same cores). wrk is closed-loop: a stalled server also slows the requests it sends, so the
percentiles understate what an open-loop client would see. Run: `python -m bench serving`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import demo_process, free_port, machine

REPO = Path(__file__).resolve().parents[1]

CONCURRENCY = (1, 8, 32)
SHADOW_ONLY = "--shadow" in sys.argv
TIMERS_ONLY = "--timers" in sys.argv
SHADOW_CONCURRENCY = (8, 32)
WRK = shutil.which("wrk")
SECONDS = float(os.environ.get("BENCH_SERVING_SECONDS", "20"))
USERS = int(os.environ.get("BENCH_SERVING_USERS", "7043"))
# Empty: the service's own default (one worker per core, up to 4).
BENTO_WORKERS = os.environ.get("BENCH_SERVING_WORKERS", "")


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


PREDICT_BODY = '{"user_id": "USER"}'


def request_bytes(user_id: str, template: str = PREDICT_BODY) -> bytes:
    body = template.replace("USER", user_id).encode()
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


def load_process(port: int, users: list[str], concurrency: int, seconds: float, body: str = PREDICT_BODY) -> dict:
    """Run in a child process: `concurrency` keep-alive connections on one event loop for `seconds`.

    Raw HTTP/1.1 over asyncio streams (uvloop when installed) costs the generator about 0.1 ms of
    CPU per request, a tenth of what threads with http.client cost, so the load it steals from
    the server on a 2-core machine stays small; that CPU is measured and printed.
    """
    import asyncio

    requests = [request_bytes(user, body) for user in users]
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


def run_load(
    port: int,
    users: list[str],
    concurrency: int,
    seconds: float,
    server_pid: int | None = None,
    body: str = PREDICT_BODY,
) -> dict:
    """Closed-loop load from a separate interpreter, so the generator's GIL isn't the server's."""
    code = (
        "import json, sys; from bench.bench_serving import load_process; "
        "a = json.load(sys.stdin); json.dump(load_process(a['port'], a['users'], a['c'], a['s'], a['b']), sys.stdout)"
    )
    payload = json.dumps({"port": port, "users": users, "c": concurrency, "s": seconds, "b": body})
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
        "p999_ms": pct(0.999),
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


def warm_up(port: int, users: list[str], body: str = PREDICT_BODY) -> None:
    run_load(port, users, 4, 3, body=body)


# ------------------------------------------------------------------------------ wrk

WRK_SCRIPT = """
local ids = {}
for line in io.lines(os.getenv("BENCH_USERS_FILE")) do ids[#ids + 1] = line end
local template = os.getenv("BENCH_BODY")
local path = os.getenv("BENCH_PATH")
local i = 0
request = function()
  i = i + 1
  local body = string.gsub(template, "USER", ids[(i * 7) % #ids + 1])
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end
done = function(summary, latency, requests)
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "p999_us": %d, '
      .. '"non2xx": %d, "socket_errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def wrk_version() -> str:
    done = subprocess.run([WRK, "-v"], capture_output=True, text=True)
    match = re.search(r"wrk [^ ]+", done.stdout + done.stderr)
    return match.group(0) if match else "wrk"


def run_wrk(port: int, target: dict, users_file: Path, concurrency: int, seconds: float) -> dict:
    """One wrk level: `concurrency` keep-alive connections over min(2, c) threads."""
    script = users_file.with_name("predict.lua")
    script.write_text(WRK_SCRIPT)
    env = {**os.environ, "BENCH_USERS_FILE": str(users_file), "BENCH_BODY": target["body"], "BENCH_PATH": "/predict"}
    threads = min(2, concurrency)
    done = subprocess.run(
        [WRK, f"-t{threads}", f"-c{concurrency}", f"-d{seconds:.0f}s", "--timeout", "60s", "-s", str(script),
         f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, env=env, timeout=seconds + 60,
    )  # fmt: skip
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {done.stdout[-1000:]} {done.stderr[-1000:]}")
    r = json.loads(line[6:])
    return {
        "requests": r["requests"],
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "p999_ms": r["p999_us"] / 1000,
        "errors": r["non2xx"] + r["socket_errors"],
    }


def bento_workers(pid: int) -> list:
    """The BentoML worker processes (psutil) under the server process `pid`."""
    import psutil

    workers = []
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            if "_bentoml_impl.worker" in " ".join(proc.cmdline()):
                workers.append(proc)
        except psutil.NoSuchProcess:
            pass
    return workers


def worker_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each BentoML worker process under `pid`, by pid (idle ones included)."""
    import psutil

    out = {}
    for proc in bento_workers(pid):
        try:
            times = proc.cpu_times()
            out[proc.pid] = times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return out


def gc_pause_s(port: int, workers: set[int]) -> dict[str, float]:
    """Total GC pause seconds per worker pid from the service's /metrics. Each scrape is answered by
    one worker, so it scrapes until it has heard from every worker (at most 60 tries)."""
    import http.client

    seen: dict[str, float] = {}
    wanted = {str(pid) for pid in workers}
    for _ in range(60):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
            conn.close()
        except OSError:
            continue
        per_pid: dict[str, float] = {}
        pattern = r'streamflow_gc_pause_seconds_total\{generation="\d",pid="(\d+)"\} ([0-9.e+-]+)'
        for pid, value in re.findall(pattern, text):
            per_pid[pid] = per_pid.get(pid, 0.0) + float(value)
        if not per_pid:
            return {}  # this target doesn't export GC pauses
        seen.update(per_pid)
        if wanted <= seen.keys():
            break
    return seen


def connection_split(pid: int, port: int) -> str:
    """Established connections to `port` held by each BentoML worker under `pid`, fewest first ("4/4")."""
    import psutil

    counts = []
    for proc in bento_workers(pid):
        try:
            held = proc.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        counts.append(sum(1 for x in held if x.status == "ESTABLISHED" and x.laddr.port == port))
    return "/".join(str(n) for n in sorted(counts)) if counts else "-"


def measure_level(port: int, target: dict, users: list[str], users_file: Path, c: int, pid: int) -> dict:
    import threading

    split: list[str] = []
    sampler = threading.Timer(min(3.0, SECONDS / 2), lambda: split.append(connection_split(pid, port)))
    sampler.start()
    cpu_before = worker_cpu(pid)
    gc_before = gc_pause_s(port, set(cpu_before))
    server_before = process_tree_cpu(pid)
    if WRK:
        stats = run_wrk(port, target, users_file, c, SECONDS)
    else:
        stats = run_load(port, users, c, SECONDS, body=target["body"])
    server_cpu = process_tree_cpu(pid) - server_before
    cpu_after = worker_cpu(pid)
    gc_after = gc_pause_s(port, set(cpu_after))
    spent = sorted(cpu_after[p] - cpu_before.get(p, 0.0) for p in cpu_after)
    stats["server_cpu_ms"] = server_cpu * 1000 / max(1, stats["requests"])
    # Worker balance: the busiest worker's CPU over the mean (1.0 = even; 2.0 with two workers =
    # one did everything, as at c=1 where the single connection sits on one worker).
    stats["balance"] = spent[-1] / (sum(spent) / len(spent)) if spent and sum(spent) > 0 else 1.0
    # None when the target doesn't export GC pauses (only the churn service does); workers heard
    # from before and after.
    paused = [gc_after[p] - gc_before[p] for p in gc_after if p in gc_before]
    stats["gc_ms"] = sum(paused) * 1000 if paused else None
    stats["gc_workers"] = f"{len(paused)}/{len(cpu_after)}"
    stats["loadavg"] = os.getloadavg()[0]
    sampler.join()
    stats["split"] = split[0] if split else "-"
    return stats


def demo_stack() -> str:
    """Whether a `make demo` stack runs on this machine (its processes share the cores), and how many."""
    demo = demo_process()
    return f"up (pid {demo.pid}, {len(demo.children(recursive=True))} processes)" if demo else "not running"


# ------------------------------------------------------------------------------ stack


def build_stack(home: Path) -> dict:
    """Embedded Postgres + one month loaded, materialized, a champion trained, registered and imported,
    and a second version (logistic regression) registered for the `shadow` target."""
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

    from streamflow_mlops.config.months import Month
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
    trained = train_model(build_training_set(Month(0)), 42, features=feature_names())
    logged = log_trained_model(trained, month=Month(0), feature_service=FEATURE_SERVICE, settings=settings)
    set_champion(configure_mlflow(settings), logged["version"], None, {"decision": "bench"})
    shadow = train_model(build_training_set(Month(0)), 7, classifier="logreg", features=feature_names())
    shadow_logged = log_trained_model(shadow, month=Month(0), feature_service=FEATURE_SERVICE, settings=settings)
    return {
        "settings": settings,
        "env": {**os.environ, **env},
        "users": users,
        "version": logged["version"],
        "shadow_version": shadow_logged["version"],
    }


def shadow_alias(settings, version: str | None) -> None:
    """Point the `shadow` alias at `version`, or remove it (None)."""
    from streamflow_mlops.config.settings import REGISTERED_MODEL, SHADOW_ALIAS
    from streamflow_mlops.model.registry import mlflow_client

    client = mlflow_client(settings.mlflow_tracking_uri)
    if version is None:
        client.delete_registered_model_alias(REGISTERED_MODEL, SHADOW_ALIAS)
    else:
        client.set_registered_model_alias(REGISTERED_MODEL, SHADOW_ALIAS, version)


def shadow_counters(port: int) -> dict[str, str]:
    """The shadow lines of one worker's /metrics (a scrape reaches one worker): version, scored, dropped."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("streamflow_shadow_info"):
            found["version"] = line.split('version="', 1)[1].split('"', 1)[0]
        for name in ("scored", "dropped"):
            if line.startswith(f"streamflow_shadow_{name}_rows_total"):
                found[name] = line.rsplit(" ", 1)[1]
    return found


def wait_for_shadow(port: int, version: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    # Several scrapes in a row: each reaches one worker, and every worker loads the shadow itself.
    seen = 0
    while seen < 6:
        seen = seen + 1 if shadow_counters(port).get("version") == version else 0
        if time.monotonic() > deadline:
            raise RuntimeError(f"the service never loaded shadow v{version}")
        time.sleep(0.3)


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


def print_levels(results: dict[str, dict[int, dict]]) -> None:
    print(
        f"\n{'target':<11}{'conc':>5}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'p99.9 ms':>9}{'p99/p50':>8}{'errors':>7}"
        f"{'CPU ms/req':>11}{'conns':>7}{'worker CPU max/mean':>20}{'GC ms':>12}{'load avg':>9}"
    )
    for name, by_c in results.items():
        for c, r in by_c.items():
            gc_ms = "-" if r["gc_ms"] is None else f"{r['gc_ms']:.0f} ({r['gc_workers']})"
            print(
                f"{name:<11}{c:>5}{r['rps']:>8.0f}{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}{r['p999_ms']:>9.2f}"
                f"{r['p99_ms'] / r['p50_ms']:>8.1f}{r['errors']:>7}{r['server_cpu_ms']:>11.2f}{r['split']:>7}"
                f"{r['balance']:>20.2f}{gc_ms:>12}{r['loadavg']:>9.1f}"
            )


def print_goals(results: dict[str, dict[int, dict]]) -> None:
    """Issue 16's goals, each with its measured value (a noisy machine can miss one; it's said)."""
    bento, seeds = results["bento"], results["seeds"]
    checks = [
        (f"c=32 >= 2,000 req/s: {bento[32]['rps']:,.0f}", bento[32]["rps"] >= 2000),
        (f"c=32 p99 <= 50 ms: {bento[32]['p99_ms']:.1f}", bento[32]["p99_ms"] <= 50),
        (f"c=1 p99 <= 10 ms: {bento[1]['p99_ms']:.1f}", bento[1]["p99_ms"] <= 10),
        *(
            (f"c={c} p99 <= 4x p50: {bento[c]['p99_ms'] / bento[c]['p50_ms']:.1f}x",
             bento[c]["p99_ms"] <= 4 * bento[c]["p50_ms"])
            for c in CONCURRENCY
        ),
        (f"0 errors: {sum(r['errors'] for r in bento.values())}", all(r["errors"] == 0 for r in bento.values())),
        (f">= 20x the seeds' design at c=32: {bento[32]['rps'] / seeds[32]['rps']:.1f}x",
         bento[32]["rps"] >= 20 * seeds[32]["rps"]),
    ]  # fmt: skip
    print("\ngoals: " + "; ".join(f"{text} {'met' if ok else 'MISSED'}" for text, ok in checks))
    print_timers(results, CONCURRENCY[1:])
    compare(results, "BentoML batchable vs the micro-batcher", "batchable", "bento", CONCURRENCY)
    print_shadow(results, CONCURRENCY)


def print_timers(results: dict, levels: tuple) -> None:
    """BentoML's timeout middleware with and without its timer cancelled, GC pauses included."""
    compare(results, "cancelled timers vs BentoML's own", "bento", "stock_timers", levels)
    if "stock_timers" in results:
        gc = lambda r: "-" if r["gc_ms"] is None else f"{r['gc_ms']:.0f}"  # noqa: E731
        print(
            "GC pause (ms, all workers), cancelled vs BentoML's own: "
            + ", ".join(f"c={c} {gc(results['bento'][c])} vs {gc(results['stock_timers'][c])}" for c in levels)
        )


def print_shadow(results: dict, levels: tuple) -> None:
    """The shadow's cost (p50/p99 with it vs without, same load), and the run-to-run noise when measured."""
    compare(results, "with shadow vs without", "shadow", "bento", levels)
    compare(results, "noise (the same server run twice)", "bento_again", "bento", levels)


def compare(results: dict, title: str, first: str, second: str, levels: tuple) -> None:
    """One line: `first` against `second`, level by level (connections split, req/s, p99)."""
    if first not in results or second not in results:
        return
    a, b = results[first], results[second]
    print(
        f"{title}: "
        + ", ".join(
            f"c={c} "
            + f"{a[c]['rps']:.0f} vs {b[c]['rps']:.0f} req/s, p50 {a[c]['p50_ms']:.2f} vs {b[c]['p50_ms']:.2f} ms, "
            + f"p99 {a[c]['p99_ms']:.1f} vs {b[c]['p99_ms']:.1f} ms"
            for c in levels
        )
    )


def main() -> None:
    print(f"machine: {machine()}")
    print(f"demo stack: {demo_stack()}")
    generator = (
        f"{wrk_version()} (C, keep-alive, Lua script)" if WRK else "Python asyncio client (no wrk: apt-get install wrk)"
    )
    print(f"load generator: {generator}")
    print(f"users {USERS:,}, {SECONDS:.0f}s per level, bento workers {BENTO_WORKERS or 'service default'}")
    with tempfile.TemporaryDirectory(prefix="bench_serving_") as tmp:
        home = Path(tmp)
        started = time.perf_counter()
        stack = build_stack(home)
        print(f"stack ready in {time.perf_counter() - started:.0f}s (champion v{stack['version']})")
        users = stack["users"][:2000]
        users_file = home / "users.txt"
        users_file.write_text("\n".join(users) + "\n")
        bin_dir = Path(sys.executable).parent
        bentoml_cmd = [str(bin_dir / "bentoml"), "serve"]
        results: dict[str, dict[int, dict]] = {}
        targets = {
            "seeds": {
                "cmd": [str(bin_dir / "uvicorn"), "--factory", "bench.bench_serving:seed_app", "--host", "127.0.0.1",
                        "--log-level", "warning", "--no-access-log"],
                "ready": "/docs",
                "body": PREDICT_BODY,
            },
            "bento": {
                "cmd": [*bentoml_cmd, "bentos.churn_service.service:ChurnService"],
                "ready": "/readyz",
                "body": PREDICT_BODY,
            },
            "shadow": {
                "cmd": [*bentoml_cmd, "bentos.churn_service.service:ChurnService"],
                "ready": "/readyz",
                "body": PREDICT_BODY,
                "shadow": True,
            },
            "stock_timers": {
                "cmd": [*bentoml_cmd, "bentos.churn_service.service:ChurnService"],
                "ready": "/readyz",
                "body": PREDICT_BODY,
                "env": {"STREAMFLOW_SERVICE_CANCEL_REQUEST_TIMERS": "0"},
            },
            "batchable": {
                "cmd": [*bentoml_cmd, "bench.batchable_service:BatchableChurnService"],
                "ready": "/readyz",
                "body": '{"user_ids": ["USER"]}',
            },
        }  # fmt: skip
        levels = CONCURRENCY
        if SHADOW_ONLY:
            targets = {"bento": targets["bento"], "shadow": targets["shadow"], "bento_again": targets["bento"]}
            levels = SHADOW_CONCURRENCY
        elif TIMERS_ONLY:
            targets = {
                "bento": targets["bento"],
                "stock_timers": targets["stock_timers"],
                "bento_again": targets["bento"],
            }
            levels = SHADOW_CONCURRENCY
        env = {**stack["env"], **({"STREAMFLOW_SERVICE_WORKERS": BENTO_WORKERS} if BENTO_WORKERS else {})}
        shadow_seen: dict[str, str] = {}
        try:
            for name, target in targets.items():
                port = free_port()
                cmd = [*target["cmd"], "--port", str(port)]
                if target.get("shadow"):
                    shadow_alias(stack["settings"], stack["shadow_version"])
                proc = serve(cmd, {**env, **target.get("env", {})}, port, target["ready"], home / f"{name}.log")
                try:
                    if target.get("shadow"):
                        wait_for_shadow(port, stack["shadow_version"])
                    warm_up(port, users, target["body"])
                    results[name] = {c: measure_level(port, target, users, users_file, c, proc.pid) for c in levels}
                    if target.get("shadow"):
                        shadow_seen = shadow_counters(port)
                finally:
                    stop(proc)
                    if target.get("shadow"):
                        shadow_alias(stack["settings"], None)
            floor_stats = None if SHADOW_ONLY or TIMERS_ONLY else floor(stack["settings"], users, SECONDS)
        finally:
            from streamflow_mlops.platform.embedded import stop_embedded

            stop_embedded(stack["settings"])

    print_levels(results)
    if shadow_seen:
        print(
            f"\nshadow v{stack['shadow_version']} beside champion v{stack['version']} (one worker's /metrics at the"
            f" end): {shadow_seen.get('scored', '?')} rows scored in shadow, {shadow_seen.get('dropped', '?')} dropped"
        )
    if floor_stats is None:
        print_shadow(results, levels)
        print_timers(results, levels)
        return
    single = floor_stats["single"]
    print(f"{'floor':<11}{1:>5}{single['rps']:>8.0f}{single['p50_ms']:>8.2f}{single['p99_ms']:>8.2f}")
    print(
        f"\nfloor per user: read {floor_stats['read_ms']:.2f} ms + model {floor_stats['model_ms']:.2f} ms"
        f" ({floor_stats['classifier']}, {'array path' if floor_stats['array_path'] else 'DataFrame path'};"
        f" the sklearn pipeline on a one-row DataFrame: {floor_stats['frame_model_ms']:.2f} ms);"
        f" 32 per call: {floor_stats['batch32_per_user_ms']:.3f} ms per user"
    )
    print_goals(results)


if __name__ == "__main__":
    main()
