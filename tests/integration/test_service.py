"""The churn service over real Postgres, a real Feast repo (sqlite online store), MLflow and BentoML.

One module-scoped stack: month_000 (500 users) loaded, applied and materialized; two models
trained, registered in MLflow and imported into the BentoML store; `champion` on version 1.
HTTP goes through `to_asgi()` and Starlette's TestClient.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY
from streamflow_mlops.config.settings import FEATURE_SERVICE, REGISTERED_MODEL, Settings, get_settings, replace_database
from streamflow_mlops.data.warehouse import create_schema, load_drop
from streamflow_mlops.features.materialize import materialize_month
from streamflow_mlops.features.retrieval import build_training_set
from streamflow_mlops.features.store import apply_repo, feature_names
from streamflow_mlops.model.compiled import PipelineModel
from streamflow_mlops.model.registry import bento_tag
from streamflow_mlops.serving.champion import load_champion
from streamflow_mlops.serving.feature_reader import FeastSdkReader, SqliteOnlineReader, build_reader, entity_key_bytes
from streamflow_mlops.serving.scoring import MAX_BATCH_IDS
from streamflow_mlops.synthetic.generate import DropSpec, write_drop

USERS = 500
MONTH = Month(0)
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class ServedStack:
    settings: Settings
    db_name: str
    users: list[str]
    versions: list[str]


def train_register_import(settings: Settings, seed: int, classifier: str) -> str:
    """A model trained on the month and registered as a `streamflow_churn` version (the training DAG's path)."""
    from streamflow_mlops.model.tracking import log_trained_model
    from streamflow_mlops.model.training import train_model

    frame = build_training_set(MONTH)
    trained = train_model(frame, seed, classifier=classifier, features=feature_names())
    logged = log_trained_model(trained, month=MONTH, feature_service=FEATURE_SERVICE, settings=settings)
    return logged["version"]


def set_champion(settings: Settings, version: str) -> None:
    """Promotion or rollback as the DAGs do it: import into BentoML, then move the alias."""
    from streamflow_mlops.model.registry import champion_version
    from streamflow_mlops.model.tracking import configure_mlflow
    from streamflow_mlops.pipelines.champion import set_champion

    client = configure_mlflow(settings)
    current = champion_version(client)
    set_champion(client, version, None if current is None else str(current.version), {"decision": "test"})


@pytest.fixture(scope="module")
def served_stack(pg_server, tmp_path_factory) -> Iterator[ServedStack]:
    home = tmp_path_factory.mktemp("served")
    db_name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STREAMFLOW_DB_URL", replace_database(pg_server, db_name))
        env.setenv("STREAMFLOW_HOME", str(home / "state"))
        env.setenv("STREAMFLOW_DROPS_DIR", str(home / "drops"))
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        env.setenv("BENTOML_HOME", str(home / "bentoml"))
        env.setenv("STREAMFLOW_CHAMPION_POLL_S", "1")
        env.delenv("STREAMFLOW_FEAST_ONLINE_STORE", raising=False)
        get_settings.cache_clear()
        settings = get_settings()
        folder = write_drop(DropSpec(0, users=USERS), settings.drops_dir)
        with psycopg.connect(settings.db_url) as conn:
            create_schema(conn)
            with conn.transaction():
                load_drop(conn, folder, DropSpec(0).as_of)
            users = [r[0] for r in conn.execute(f"SELECT {ENTITY} FROM streamflow.users ORDER BY {ENTITY}")]
        apply_repo(settings)
        materialize_month(MONTH, settings)
        versions = [train_register_import(settings, 1, "hgb"), train_register_import(settings, 2, "logreg")]
        set_champion(settings, versions[0])
        yield ServedStack(settings, db_name, users, versions)
        get_settings.cache_clear()
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def service_app():
    """The ASGI app of bentos/churn_service/service.py, loaded by path as `bentoml serve` does."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[2] / "bentos" / "churn_service" / "service.py"
    spec = importlib.util.spec_from_file_location("churn_service_under_test", path)
    service_module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as an import would: pydantic resolves the module's annotations there.
    sys.modules[spec.name] = service_module
    spec.loader.exec_module(service_module)
    return service_module.ChurnService.to_asgi()


@pytest.fixture(scope="module")
def client(served_stack):
    from starlette.testclient import TestClient

    with TestClient(service_app(), raise_server_exceptions=False) as test_client:
        deadline = time.monotonic() + 60
        while test_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "service never became ready"
            time.sleep(0.2)
        yield test_client


def online_db(stack: ServedStack) -> Path:
    return stack.settings.state_dir / "online_store.db"


@contextmanager
def sqlite_change(stack: ServedStack, do: str, undo: str, params=()):
    with sqlite3.connect(online_db(stack)) as conn:
        conn.execute(do, params)
    try:
        yield
    finally:
        with sqlite3.connect(online_db(stack)) as conn:
            conn.execute(undo, params)


# ------------------------------------------------------------------------------ readers


def test_fast_reader_matches_the_feast_sdk(served_stack):
    sdk = FeastSdkReader(served_stack.settings)
    fast = build_reader(served_stack.settings)
    assert isinstance(fast, SqliteOnlineReader)
    users = served_stack.users[::10] + ["0000-NOONE"]
    expected = sdk.read(users, "churn_model_v1")
    assert fast.read(users, "churn_model_v1") == expected
    assert all(v is None for v in expected["0000-NOONE"].values())
    assert [r.name for r in fast.feature_refs("churn_model_v1")] == feature_names()


def test_load_champion_gives_the_raw_pipeline_with_its_threshold(served_stack):
    champion = load_champion(bento_tag(served_stack.versions[0]))
    assert champion.version == served_stack.versions[0]
    assert 0 < champion.threshold < 1
    assert isinstance(champion.model, PipelineModel)
    rows = FeastSdkReader(served_stack.settings).read(served_stack.users[:3], champion.feature_service)
    scores = champion.model.predict_proba([rows[u] for u in served_stack.users[:3]])
    assert scores.shape == (3,)


def test_array_scoring_equals_the_pipeline_on_feast_features(served_stack):
    import numpy as np

    from streamflow_mlops.model.bento_import import import_to_bentoml
    from streamflow_mlops.model.tracking import configure_mlflow

    reader = FeastSdkReader(served_stack.settings)
    client = configure_mlflow(served_stack.settings)
    # v1 last, so the store's newest model stays the champion the other tests expect.
    for version in reversed(served_stack.versions):  # a logistic regression and an HGB champion
        champion = load_champion(import_to_bentoml(client, version, served_stack.settings))
        assert champion.model.fast is not None, f"v{version} is scored through the DataFrame path"
        rows = reader.read(served_stack.users, champion.feature_service)
        batch = [rows[u] for u in served_stack.users]
        assert np.array_equal(champion.model.predict_proba(batch), champion.model.frame_predict_proba(batch))
        for row in batch[:25]:
            assert np.array_equal(champion.model.predict_proba([row]), champion.model.frame_predict_proba([row]))


# ------------------------------------------------------------------------------ HTTP


def test_predict_answers_with_model_threshold_and_features(client, served_stack):
    user = served_stack.users[0]
    answer = client.post("/predict", json={"user_id": user})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["user_id"] == user
    assert body["model"] == {"name": REGISTERED_MODEL, "version": served_stack.versions[0]}
    assert body["churn"] == (body["churn_probability"] >= body["threshold"])
    assert list(body["features"]) == feature_names()
    online = client.post("/features", json={"user_id": user}).json()
    assert online["features"] == body["features"] and online["feature_service"] == "churn_model_v1"


def test_a_tree_champion_answers_with_no_reasons(client, served_stack):
    # versions[0] is HGB: no exact decomposition, so no reason codes (model/reasons.py).
    body = client.post("/predict", json={"user_id": served_stack.users[0]}).json()
    assert body["model"]["version"] == served_stack.versions[0] and body["reasons"] == []


def test_docs_describe_the_service_its_routes_and_errors(client):
    description = client.get("/docs.json").json()["info"]["description"]
    assert description.startswith("# StreamFlow churn service")
    for text in ("POST /predict_batch", "reasons", "unknown_user", "missing_features", "503"):
        assert text in description, text
    assert "This is a Machine Learning Service created with BentoML" not in description


def test_predict_batch_reports_unknown_ids_per_item(client, served_stack):
    ids = [served_stack.users[1], "0000-NOONE", served_stack.users[2]]
    answer = client.post("/predict_batch", json={"user_ids": ids})
    assert answer.status_code == 200, answer.text
    first, unknown, last = answer.json()
    assert first["user_id"] == ids[0] and last["user_id"] == ids[2]
    assert unknown == {"error": "unknown_user", "user_id": "0000-NOONE", "status": 404}
    single = client.post("/predict", json={"user_id": ids[0]}).json()
    assert single["churn_probability"] == pytest.approx(first["churn_probability"])


def test_unknown_user_is_404(client):
    for route in ("/predict", "/features"):
        answer = client.post(route, json={"user_id": "0000-NOONE"})
        assert answer.status_code == 404
        assert answer.json() == {"error": "unknown_user", "user_id": "0000-NOONE"}


@pytest.mark.parametrize(
    ("route", "payload"),
    [
        ("/predict", {"user_id": "not an id"}),
        ("/predict", {"user_id": 42}),
        ("/predict", {}),
        ("/predict", {"user_id": "x" * 10_000}),
        ("/predict_batch", {"user_ids": []}),
        ("/predict_batch", {"user_ids": "7590-VHVEG"}),
        ("/predict_batch", {"user_ids": ["7590-VHVEG"] * (MAX_BATCH_IDS + 1)}),
        ("/features", {"user_id": None}),
    ],
)
def test_malformed_input_is_400(client, route, payload):
    answer = client.post(route, json=payload)
    assert answer.status_code == 400, answer.text
    assert "error" in answer.text


def test_broken_json_and_oversize_bodies_are_400(client):
    broken = client.post("/predict", content=b'{"user_id": ', headers={"content-type": "application/json"})
    assert broken.status_code == 400
    huge = client.post("/predict", content=b"[" + b"1," * 100_000 + b"1]", headers={"content-type": "application/json"})
    assert huge.status_code == 400 and huge.json()["error"] == "request_too_large"


def test_missing_features_are_422_with_the_list(client, served_stack):
    user = served_stack.users[3]
    key = entity_key_bytes(user)
    with sqlite3.connect(online_db(served_stack)) as conn:
        saved = conn.execute("SELECT * FROM streamflow_payments_agg_90d WHERE entity_key = ?", (key,)).fetchall()
        conn.execute("DELETE FROM streamflow_payments_agg_90d WHERE entity_key = ?", (key,))
    try:
        answer = client.post("/predict", json={"user_id": user})
        assert answer.status_code == 422
        assert answer.json() == {"error": "missing_features", "user_id": user, "missing": ["failed_payments_90d"]}
        item = client.post("/predict_batch", json={"user_ids": [user]}).json()[0]
        assert item["error"] == "missing_features" and item["status"] == 422
    finally:
        with sqlite3.connect(online_db(served_stack)) as conn:
            marks = ",".join("?" * len(saved[0]))
            conn.executemany(f"INSERT INTO streamflow_payments_agg_90d VALUES ({marks})", saved)
    assert client.post("/predict", json={"user_id": user}).status_code == 200


def test_online_store_down_is_503_and_recovers(client, served_stack):
    user = served_stack.users[4]
    with sqlite_change(
        served_stack,
        "ALTER TABLE streamflow_usage_agg_30d RENAME TO usage_away",
        "ALTER TABLE usage_away RENAME TO streamflow_usage_agg_30d",
    ):
        for route in ("/predict", "/features"):
            answer = client.post(route, json={"user_id": user})
            assert answer.status_code == 503
            assert answer.json()["error"] == "feature_store_unavailable"
        assert client.post("/predict_batch", json={"user_ids": [user]}).status_code == 503
    assert client.post("/predict", json={"user_id": user}).status_code == 200


def metric_line(client, name: str) -> str:
    return next(x for x in client.get("/metrics").text.splitlines() if x.startswith(name))


def metric_value(client, name: str) -> float:
    return float(metric_line(client, name).rsplit(" ", 1)[1])


def logged_rows(
    stack: ServedStack, user: str, columns: str = "user_id, model_version, churn_probability, features"
) -> list[tuple]:
    """`user`'s prediction_log rows, oldest first."""
    with psycopg.connect(stack.settings.db_url) as conn:
        return conn.execute(
            f"SELECT {columns} FROM streamflow.prediction_log WHERE user_id = %s ORDER BY id", (user,)
        ).fetchall()


def wait_for(condition, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)
    return result


def test_predictions_are_logged_off_the_request_path(client, served_stack):
    user = served_stack.users[5]
    body = client.post("/predict", json={"user_id": user}).json()
    rows = wait_for(lambda: logged_rows(served_stack, user))
    assert rows[0][0] == user and rows[0][1] == served_stack.versions[0]
    assert rows[0][2] == pytest.approx(body["churn_probability"])
    assert rows[0][3] == body["features"]


def test_database_down_for_seconds_loses_no_log_row_and_no_request(client, served_stack, pg_server):
    users = served_stack.users[6:9]

    def dropped() -> float:
        return metric_value(client, "streamflow_prediction_log_dropped")

    def logged() -> int:
        return sum(len(logged_rows(served_stack, u)) for u in users)

    before, rows_before = dropped(), logged()
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{served_stack.db_name}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (served_stack.db_name,)
        )
        try:
            deadline = time.monotonic() + 5
            served = 0
            while time.monotonic() < deadline:
                for user in users:
                    assert client.post("/predict", json={"user_id": user}).status_code == 200
                    served += 1
        finally:
            admin.execute(f'ALTER DATABASE "{served_stack.db_name}" ALLOW_CONNECTIONS true')
    assert wait_for(lambda: logged() >= rows_before + served, timeout_s=30)
    assert logged() == rows_before + served and dropped() == before


def shadow_logged(stack: ServedStack, user: str) -> list[tuple]:
    columns = "model_version, churn_probability, shadow_version, shadow_probability, features"
    return logged_rows(stack, user, columns)


def shadow_columns(stack: ServedStack) -> int:
    with psycopg.connect(stack.settings.db_url) as conn:
        return conn.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'streamflow' "
            "AND table_name = 'prediction_log' AND column_name IN ('shadow_version', 'shadow_probability')"
        ).fetchone()[0]


def test_a_challenger_waiting_for_review_is_scored_in_shadow_and_logged_beside_the_champion(client, served_stack):
    """The review's `shadow` alias (pipelines/review.py) on v2: the answer stays v1's, prediction_log
    gets both probabilities, even in a warehouse created before the shadow columns."""
    import pandas as pd

    from streamflow_mlops.model.registry import load_version, score_pipeline, shadow_version
    from streamflow_mlops.model.tracking import configure_mlflow
    from streamflow_mlops.pipelines.review import shadow_while_waiting

    champion, challenger = served_stack.versions
    with psycopg.connect(served_stack.settings.db_url) as conn:
        conn.execute("ALTER TABLE streamflow.prediction_log DROP COLUMN shadow_version, DROP COLUMN shadow_probability")
    assert shadow_columns(served_stack) == 0
    registry = configure_mlflow(served_stack.settings)
    user = served_stack.users[20]
    shadow_while_waiting(challenger, waiting=True)
    try:
        assert str(shadow_version(registry).version) == challenger
        wait_for(lambda: f'version="{challenger}"' in metric_line(client, "streamflow_shadow_info"))
        answer = client.post("/predict", json={"user_id": user})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"]["version"] == champion
        # The log writer adds the columns back when its first shadow row finds them missing.
        wait_for(lambda: shadow_columns(served_stack) == 2)
        [row] = wait_for(lambda: shadow_logged(served_stack, user))
        model_version, probability, shadow, shadow_probability, features = row
        assert (model_version, shadow) == (champion, challenger)
        assert probability == pytest.approx(body["churn_probability"]) and features == body["features"]
        # The challenger's own probability for these features, through the registry as training scores it.
        registered = load_version(registry, challenger)
        [expected] = score_pipeline(challenger, registered.pipeline(), pd.DataFrame([body["features"]]))
        assert shadow_probability == pytest.approx(float(expected), abs=1e-9)
        assert shadow_probability != pytest.approx(probability)
        assert metric_value(client, "streamflow_shadow_scored_rows_total") >= 1
    finally:
        shadow_while_waiting(challenger, waiting=False)
    assert shadow_version(registry) is None
    wait_for(lambda: 'version=""' in metric_line(client, "streamflow_shadow_info"))
    assert client.post("/predict", json={"user_id": user}).status_code == 200
    wait_for(lambda: len(shadow_logged(served_stack, user)) == 2)
    after = shadow_logged(served_stack, user)[1]
    assert after[0] == champion and after[2:4] == (None, None)


def test_the_review_leaves_a_shadow_alias_someone_moved_alone(served_stack):
    from streamflow_mlops.model.registry import clear_shadow, set_shadow, shadow_version
    from streamflow_mlops.model.tracking import configure_mlflow

    registry = configure_mlflow(served_stack.settings)
    set_shadow(registry, served_stack.versions[0])
    try:
        assert not clear_shadow(registry, served_stack.versions[1])
        assert str(shadow_version(registry).version) == served_stack.versions[0]
    finally:
        assert clear_shadow(registry, served_stack.versions[0])


def test_readyz_is_ready_and_metrics_show_the_champion(client, served_stack):
    assert client.get("/readyz").status_code == 200
    assert f'version="{served_stack.versions[0]}"' in client.get("/metrics").text


# ------------------------------------------------------------------------------ the built bento, served


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_built_bento_serves_outside_the_tree_and_hot_swaps_under_load(served_stack, tmp_path):
    """`make bento`'s build, `bentoml serve <tag>` from another folder, the alias moved while clients hammer it."""
    import os
    import subprocess
    import sys
    import threading

    import bentoml

    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "STREAMFLOW_REPO"}
    env.update(STREAMFLOW_CHAMPION_POLL_S="1")
    built = subprocess.run(
        [sys.executable, "-m", "streamflow_mlops", "bento"], env=env, cwd=repo, capture_output=True, text=True
    )
    assert built.returncode == 0, built.stderr
    assert "(missing)" not in built.stdout and bento_tag(served_stack.versions[0]) in built.stdout
    tag = built.stdout.split("built bento ", 1)[1].split()[0]
    bento = bentoml.bentos.get(tag)
    assert (Path(bento.path) / "env" / "docker" / "Dockerfile").exists()
    requirements = (Path(bento.path) / "env" / "python" / "requirements.txt").read_text()
    assert "bentoml==" in requirements and "apache-airflow" not in requirements

    port = free_port()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("bentoml")), "serve", tag, "--port", str(port)],
        env=env,
        cwd=outside,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "serve.log").open("w"),
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with bentoml.SyncHTTPClient(url, server_ready_timeout=5) as probe:
                    if probe.is_ready(timeout=5):
                        break
            except Exception:
                pass
            assert time.monotonic() < deadline, "bento never became ready"
            time.sleep(0.5)

        with bentoml.SyncHTTPClient(url) as client:
            answer = client.predict(user_id=served_stack.users[0])
        assert answer["model"]["version"] == served_stack.versions[0]

        # Property-based fuzzing from the service's own OpenAPI document, every route: positive and
        # negative cases plus the coverage phase's content-type probes (multipart without a boundary,
        # text/plain...), which answered 500 before the JSON-only guard. Any 5xx fails.
        fuzz = subprocess.run(
            [str(Path(sys.executable).with_name("schemathesis")), "run", f"{url}/docs.json", "--mode", "all"]
            + ["--checks", "not_a_server_error", "--max-examples", "30", "--workers", "1", "--no-color"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert fuzz.returncode == 0, fuzz.stdout[-6000:] + fuzz.stderr[-2000:]

        import httpx

        stop = threading.Event()
        seen: list[list[str]] = [[] for _ in range(4)]
        failures: list[str] = []

        def hammer(user: str, versions: list[str]) -> None:
            with httpx.Client(base_url=url, timeout=10) as http:
                while not stop.is_set():
                    response = http.post("/predict", json={"user_id": user})
                    if response.status_code != 200:
                        failures.append(response.text)
                    else:
                        versions.append(response.json()["model"]["version"])

        threads = [
            threading.Thread(target=hammer, args=(user, versions))
            for user, versions in zip(served_stack.users[10:14], seen, strict=True)
        ]
        for thread in threads:
            thread.start()
        time.sleep(1)
        set_champion(served_stack.settings, served_stack.versions[1])
        try:
            wait_for(lambda: all(v and v[-1] == served_stack.versions[1] for v in seen), 40)
            time.sleep(1)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            set_champion(served_stack.settings, served_stack.versions[0])
        assert failures == []
        old, new = served_stack.versions
        for versions in seen:
            assert versions[0] == old and versions[-1] == new
            switch = versions.index(new)
            assert set(versions[:switch]) == {old} and set(versions[switch:]) == {new}, "went back after the swap"
    finally:
        server.terminate()
        server.wait(timeout=30)
