"""Request logic of the churn service, without HTTP, Feast or MLflow: lookups, answers, swaps, batching, log."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from streamflow_mlops.model.compiled import ArrayPipeline, PipelineModel, compile_pipeline, spline_step
from streamflow_mlops.monitoring.prediction_log import LogRow, PredictionLogWriter
from streamflow_mlops.serving.champion import (
    FIRST_LOAD_WAIT_S,
    Champion,
    ChampionWatcher,
    ModelHolder,
    champion_labels,
    newest_imported_tag,
)
from streamflow_mlops.serving.errors import MissingFeatures, Unavailable, UnknownUser
from streamflow_mlops.serving.feature_reader import FeatureRef, SqliteOnlineReader, split_lookup
from streamflow_mlops.serving.http import BodySizeLimit, JsonBodyOnly
from streamflow_mlops.serving.runtime import ServiceRuntime
from streamflow_mlops.serving.scoring import ChurnScorer, MicroBatcher
from tests.conftest import bentoml_home, offline_settings

FEATURES = ("monthly_fee", "net_service")


class TableReader:
    """An online store held in a dict: the same contract as the Feast readers (None = missing)."""

    def __init__(self, rows: dict[str, dict], fail: bool = False) -> None:
        self.rows = rows
        self.fail = fail
        self.reads: list[list[str]] = []

    def feature_refs(self, feature_service: str) -> tuple[FeatureRef, ...]:
        return tuple(FeatureRef("view", name) for name in FEATURES)

    def read(self, user_ids, feature_service):
        if self.fail:
            raise Unavailable("feature_store", "down")
        self.reads.append(list(user_ids))
        return {u: {n: self.rows.get(u, {}).get(n) for n in FEATURES} for u in user_ids}

    def forget_refs(self) -> None:
        """Nothing cached."""


@functools.cache
def fitted_model() -> PipelineModel:
    frame = pd.DataFrame(
        {"monthly_fee": [10.0, 90.0, 20.0, 80.0], "net_service": ["DSL", "Fiber optic", "No", "Fiber optic"]}
    )
    pipeline = Pipeline(
        [
            ("encode", ColumnTransformer([("cat", OneHotEncoder(), ["net_service"])], remainder="passthrough")),
            ("model", LogisticRegression()),
        ]
    )
    pipeline.fit(frame, [0, 1, 0, 1])
    return PipelineModel(pipeline, FEATURES)


def champion(version: str = "1", threshold: float = 0.5, model=None) -> Champion:
    return Champion(
        name="streamflow_churn",
        version=version,
        tag=f"streamflow_churn:v{version}",
        threshold=threshold,
        feature_service="churn_model_v1",
        model=model or fitted_model(),
    )


ROWS = {
    "0001-AAAAA": {"monthly_fee": 95.0, "net_service": "Fiber optic"},
    "0002-BBBBB": {"monthly_fee": 12.0, "net_service": "DSL"},
    "0003-CCCCC": {"monthly_fee": 50.0},
}


def scorer(reader=None, log=None) -> ChurnScorer:
    holder = ModelHolder()
    holder.swap(champion())
    return ChurnScorer(holder, reader or TableReader(ROWS), log)


def test_split_lookup_tells_unknown_from_missing():
    assert split_lookup("u", {"a": 1, "b": 2}) == {"a": 1, "b": 2}
    with pytest.raises(UnknownUser):
        split_lookup("u", {"a": None, "b": None})
    with pytest.raises(MissingFeatures) as missing:
        split_lookup("u", {"a": 1, "b": None})
    assert missing.value.body() == {"error": "missing_features", "user_id": "u", "missing": ["b"]}
    assert missing.value.status == 422


def test_errors_carry_the_designed_status_and_body():
    assert UnknownUser("7590-VHVEG").status == 404
    assert UnknownUser("7590-VHVEG").body() == {"error": "unknown_user", "user_id": "7590-VHVEG"}
    assert Unavailable("model", "none").status == 503
    assert Unavailable("feature_store", "x").body()["error"] == "feature_store_unavailable"


def test_score_answers_in_order_with_per_item_errors():
    outcomes = scorer().score(["0001-AAAAA", "9999-ZZZZZ", "0003-CCCCC", "0002-BBBBB"])
    first, unknown, missing, second = outcomes
    assert first["user_id"] == "0001-AAAAA" and second["user_id"] == "0002-BBBBB"
    assert isinstance(unknown, UnknownUser) and unknown.user_id == "9999-ZZZZZ"
    assert isinstance(missing, MissingFeatures) and missing.missing == ["net_service"]
    assert first["churn_probability"] > second["churn_probability"]
    assert first["model"] == {"name": "streamflow_churn", "version": "1"}
    assert first["features"] == ROWS["0001-AAAAA"]
    assert first["threshold"] == 0.5
    assert first["churn"] is (first["churn_probability"] >= 0.5)


def test_score_reads_each_user_once_and_repeats_answers():
    reader = TableReader(ROWS)
    outcomes = scorer(reader).score(["0001-AAAAA", "0001-AAAAA"])
    assert reader.reads == [["0001-AAAAA"]]
    assert outcomes[0] == outcomes[1]


def test_decision_follows_the_champion_threshold():
    model = fitted_model()
    holder = ModelHolder()
    holder.swap(champion(model=model))
    p = ChurnScorer(holder, TableReader(ROWS)).score(["0002-BBBBB"])[0]["churn_probability"]
    holder.swap(champion(threshold=(p + 1) / 2, model=model))
    strict = ChurnScorer(holder, TableReader(ROWS)).score(["0002-BBBBB"])[0]
    holder.swap(champion(threshold=p / 2, model=model))
    lax = ChurnScorer(holder, TableReader(ROWS)).score(["0002-BBBBB"])[0]
    assert strict["churn"] is False and lax["churn"] is True
    assert strict["churn_probability"] == lax["churn_probability"] == p


def test_no_champion_or_store_down_is_unavailable():
    with pytest.raises(Unavailable) as no_model:
        ChurnScorer(ModelHolder(), TableReader(ROWS)).score(["0001-AAAAA"])
    assert no_model.value.what == "model"
    with pytest.raises(Unavailable) as no_store:
        scorer(TableReader(ROWS, fail=True)).score(["0001-AAAAA"])
    assert no_store.value.what == "feature_store"


def test_requests_wait_for_a_starting_workers_first_champion():
    holder = ModelHolder()
    holder.loading()
    outcomes: list = []
    waiting = threading.Thread(
        target=lambda: outcomes.append(ChurnScorer(holder, TableReader(ROWS)).score(["0001-AAAAA"]))
    )
    waiting.start()
    time.sleep(0.2)
    assert outcomes == []  # still waiting, not a 503
    holder.swap(champion())
    waiting.join(timeout=5)
    assert outcomes[0][0]["user_id"] == "0001-AAAAA"

    empty = ModelHolder()
    empty.loading()
    empty.settle()  # the first load attempt found nothing: no more waiting
    started = time.monotonic()
    with pytest.raises(Unavailable):
        ChurnScorer(empty, TableReader(ROWS)).score(["0001-AAAAA"])
    assert time.monotonic() - started < FIRST_LOAD_WAIT_S


def test_features_answers_the_champion_feature_service():
    assert scorer().features("0002-BBBBB") == {
        "user_id": "0002-BBBBB",
        "feature_service": "churn_model_v1",
        "features": ROWS["0002-BBBBB"],
    }
    with pytest.raises(UnknownUser):
        scorer().features("9999-ZZZZZ")


def test_scored_predictions_go_to_the_log_queue():
    log = PredictionLogWriter("postgresql://127.0.0.1:1/none")
    scorer(log=log).score(["0001-AAAAA", "9999-ZZZZZ"])
    rows = log._take_batch(0.0)
    assert [r.user_id for r in rows] == ["0001-AAAAA"]
    assert rows[0].model_version == "1" and rows[0].features == ROWS["0001-AAAAA"]


def test_champion_labels_read_version_threshold_and_feature_service():
    labels = {"mlflow_version": "7", "threshold": "0.42", "feature_service": "churn_model_v1"}
    assert champion_labels(labels, {}) == ("7", 0.42, "churn_model_v1")
    assert champion_labels({"mlflow_version": "3"}, {"threshold": 0.3}) == ("3", 0.3, "churn_model_v1")
    registry_style = {"mlflow_version": "4", "threshold": "", "feature_service": ""}
    assert champion_labels(registry_style, {"threshold": 0.25}) == ("4", 0.25, "churn_model_v1")
    with pytest.raises(ValueError):
        champion_labels({}, {})
    with pytest.raises(ValueError):
        champion_labels({"mlflow_version": "1", "threshold": "1.5"}, {})


def test_pipeline_model_runs_single_threaded():
    from sklearn.ensemble import RandomForestClassifier

    frame = pd.DataFrame({"monthly_fee": [1.0, 2.0, 3.0, 4.0], "net_service": ["DSL", "No", "DSL", "No"]})
    pipeline = Pipeline(
        [
            ("encode", ColumnTransformer([("cat", OneHotEncoder(), ["net_service"])], remainder="passthrough")),
            ("model", RandomForestClassifier(n_estimators=3, n_jobs=-1, random_state=0)),
        ]
    ).fit(frame, [0, 1, 0, 1])
    model = PipelineModel(pipeline, FEATURES)
    assert pipeline.named_steps["model"].n_jobs == 1
    scores = model.predict_proba([{"monthly_fee": 1.0, "net_service": "DSL"}])
    assert scores.shape == (1,) and 0.0 <= scores[0] <= 1.0


@pytest.mark.parametrize("extrapolation", ["linear", "constant"])
@pytest.mark.parametrize(("degree", "include_bias"), [(2, True), (3, False), (3, True)])
def test_spline_step_repeats_spline_transformer_exactly(extrapolation, degree, include_bias):
    from sklearn.preprocessing import SplineTransformer

    rng = np.random.default_rng(0)
    fitted = SplineTransformer(n_knots=5, degree=degree, extrapolation=extrapolation, include_bias=include_bias).fit(
        rng.normal(size=(200, 3))
    )
    values = rng.normal(scale=3.0, size=(300, 3))  # a good share beyond the fitted range on both sides
    assert np.array_equal(spline_step(fitted)(values), fitted.transform(values))
    with pytest.raises(ValueError):
        spline_step(fitted)(np.array([[np.nan, 0.0, 0.0]]))
    assert spline_step(SplineTransformer(degree=1).fit(rng.normal(size=(50, 1)))) is None


def test_a_fast_path_that_disagrees_is_dropped_for_the_pipeline():
    model = PipelineModel(fitted_model().pipeline, FEATURES)
    assert model.fast is not None
    rows = [{"monthly_fee": 15.0, "net_service": "DSL"}, {"monthly_fee": 85.0, "net_service": "No"}]
    expected = model.frame_predict_proba(rows)
    classifier = model.fast.classifier
    model.fast = ArrayPipeline(model.fast.branches, (lambda values: values * 2,), classifier, model.fast.scores)
    assert not model.verify(rows)
    assert model.fast is None
    assert np.array_equal(model.predict_proba(rows), expected)


def test_pipelines_of_other_shapes_are_scored_through_the_pipeline():
    from sklearn.preprocessing import StandardScaler

    frame = pd.DataFrame({"monthly_fee": [10.0, 90.0, 20.0, 80.0], "net_service": ["DSL", "No", "DSL", "No"]})
    bare = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression())]).fit(
        frame[["monthly_fee"]], [0, 1, 0, 1]
    )
    dropping = Pipeline(
        [
            ("encode", ColumnTransformer([("cat", OneHotEncoder(drop="first"), ["net_service"])])),
            ("model", LogisticRegression()),
        ]
    ).fit(frame, [0, 1, 0, 1])
    assert compile_pipeline(bare) is None
    assert compile_pipeline(dropping) is None
    model = PipelineModel(dropping, FEATURES)
    assert model.predict_proba([{"monthly_fee": 1.0, "net_service": "No"}]).shape == (1,)


def test_watcher_swaps_only_when_the_alias_moves():
    holder = ModelHolder()
    wanted = {"version": "1"}
    loads: list[str] = []

    def load(tag: str) -> Champion:
        loads.append(tag)
        return champion(tag.split(":v")[1])

    watcher = ChampionWatcher(holder, lambda: wanted["version"], load)
    assert watcher.poll_once() is True
    assert holder.champion.version == "1"
    assert watcher.poll_once() is False
    wanted["version"] = "2"
    assert watcher.poll_once() is True
    assert holder.champion.version == "2"
    assert loads == ["streamflow_churn:v1", "streamflow_churn:v2"]


def test_watcher_keeps_the_current_model_when_mlflow_or_loading_fails():
    holder = ModelHolder()
    holder.swap(champion("3"))

    def unreachable() -> str:
        raise ConnectionError("mlflow down")

    def broken(tag: str) -> Champion:
        raise OSError("model files gone")

    assert ChampionWatcher(holder, unreachable, broken).poll_once() is False
    assert ChampionWatcher(holder, lambda: "4", broken).poll_once() is False
    watcher = ChampionWatcher(holder, lambda: "4", broken)
    watcher.poll_once()
    assert holder.champion.version == "3" and "model files gone" in watcher.last_error


def test_newest_imported_tag_is_none_in_a_store_that_never_had_the_model(tmp_path):
    # A fresh stack: BentoML raises NotFound for a model name that was never imported.
    with bentoml_home(tmp_path / "bentoml"):
        assert newest_imported_tag() is None


class FlakyReader(TableReader):
    """An online store whose first lookups fail with errors nobody planned for."""

    def __init__(self, rows: dict[str, dict], failures: int) -> None:
        super().__init__(rows)
        self.failures = failures

    def feature_refs(self, feature_service: str) -> tuple[FeatureRef, ...]:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("registry answered garbage")
        return super().feature_refs(feature_service)


def test_runtime_watcher_survives_a_fresh_stack_and_any_poll_error_then_serves_the_first_champion(tmp_path):
    """The compose stack's churn service starts before any champion exists and must pick up the first one."""
    promoted: dict[str, str] = {}

    def champion_version() -> str:
        if "version" not in promoted:
            raise LookupError("registered model alias champion not found")
        return promoted["version"]

    settings = offline_settings(tmp_path)
    reader = FlakyReader(ROWS, failures=2)
    swaps: list[str] = []
    with bentoml_home(tmp_path / "bentoml"):
        runtime = ServiceRuntime(
            settings,
            read_champion_version=champion_version,
            poll_interval_s=0.05,
            reader_factory=lambda _settings: reader,
            log_writer=PredictionLogWriter(settings.db_url),
            # The service freezes the heap here (serving.heap.settle_heap): once per new champion.
            after_swap=lambda: swaps.append(runtime.holder.champion.version),
        )
        runtime.watcher.load = lambda tag: champion(tag.split(":v")[1])
        runtime.start()
        try:
            time.sleep(0.5)  # polls with no champion anywhere: MLflow has no alias, BentoML no model
            assert runtime._thread.is_alive() and not runtime.ready()
            promoted["version"] = "1"
            deadline = time.monotonic() + 5
            # The first polls with a champion hit the store's unforeseen errors; later ones succeed.
            while (reader.failures or not runtime.ready()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert runtime.ready() and runtime.holder.champion.version == "1"
            assert runtime._thread.is_alive()
            time.sleep(0.2)  # more polls, same champion: no second swap
            assert swaps == ["1"]
        finally:
            runtime.stop()


def test_swap_is_atomic_under_concurrent_scoring():
    """Every answer comes whole from one champion: version and threshold never mix."""
    holder = ModelHolder()
    holder.swap(champion("1", threshold=0.1))
    s = ChurnScorer(holder, TableReader(ROWS))
    mixed: list[dict] = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            for outcome in s.score(["0001-AAAAA", "0002-BBBBB"]):
                expected = 0.1 if outcome["model"]["version"] == "1" else 0.9
                if outcome["threshold"] != expected:
                    mixed.append(outcome)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    models = {"1": champion("1", 0.1), "2": champion("2", 0.9)}
    for i in range(60):
        holder.swap(models[str(i % 2 + 1)])
    stop.set()
    for t in threads:
        t.join()
    assert mixed == []


def test_micro_batcher_coalesces_concurrent_requests():
    calls: list[list[str]] = []

    def score(ids):
        calls.append(list(ids))
        time.sleep(0.01)
        return [{"user_id": i} if not i.startswith("bad") else UnknownUser(i) for i in ids]

    async def run():
        batcher = MicroBatcher(score, max_batch=16)
        ids = [f"u{i}" for i in range(40)] + ["bad1"]
        results = await asyncio.gather(*(batcher.submit(i) for i in ids), return_exceptions=True)
        batcher.close()
        return ids, results

    ids, results = asyncio.run(run())
    assert [r["user_id"] for r in results[:-1]] == ids[:-1]
    assert isinstance(results[-1], UnknownUser)
    assert max(len(c) for c in calls) == 16 and len(calls) < len(ids)
    assert sorted(i for c in calls for i in c) == sorted(ids)


def test_micro_batcher_turns_a_stuck_batch_into_503_and_an_exception_into_errors():
    release = threading.Event()

    def stuck(ids):
        release.wait(5)
        return [{"user_id": i} for i in ids]

    def down(ids):
        raise Unavailable("feature_store", "gone")

    async def run():
        slow = MicroBatcher(stuck, timeout_s=0.2)
        with pytest.raises(Unavailable):
            await slow.submit("u1")
        release.set()
        slow.close()
        broken = MicroBatcher(down)
        with pytest.raises(Unavailable) as exc:
            await broken.submit("u1")
        broken.close()
        return exc.value

    assert asyncio.run(run()).what == "feature_store"


def test_sqlite_reader_rereads_a_redefined_feature_service_after_its_ttl_or_a_champion_change():
    class Registry:
        """Stands in for the Feast registry lookup (FeastSdkReader.feature_refs): a service redefined."""

        def __init__(self):
            self.names = ("monthly_fee",)

        def feature_refs(self, feature_service):
            return tuple(FeatureRef("view", name) for name in self.names)

    registry = Registry()
    reader = SqliteOnlineReader("/nonexistent.db", "streamflow", registry, refs_ttl_s=0.2)
    assert [r.name for r in reader.feature_refs("churn")] == ["monthly_fee"]
    registry.names = ("monthly_fee", "skips_7d")
    assert [r.name for r in reader.feature_refs("churn")] == ["monthly_fee"]
    reader.forget_refs()
    assert [r.name for r in reader.feature_refs("churn")] == ["monthly_fee", "skips_7d"]
    registry.names = ("skips_7d",)
    time.sleep(0.25)
    assert [r.name for r in reader.feature_refs("churn")] == ["skips_7d"]


def test_log_writer_counts_rows_dropped_when_the_queue_is_full():
    log = PredictionLogWriter("postgresql://127.0.0.1:1/none", max_queue=2)
    row = LogRow(datetime.now(UTC), "u", {"a": 1}, 0.5, "streamflow_churn", "1")
    log.submit([row, row, row, row])
    assert log.dropped == 2


def test_log_writer_keeps_a_batch_it_cannot_write_for_the_next_try():
    log = PredictionLogWriter("postgresql://postgres@127.0.0.1:1/none")
    row = LogRow(datetime.now(UTC), "u", {"a": np.float64(1.0)}, 0.5, "streamflow_churn", "1")
    log.submit([row, row])
    assert log._step(0.0) is False
    assert log.dropped == 0 and log.written == 0 and len(log._pending) == 2


def test_log_writer_with_its_database_down_accounts_for_every_row():
    log = PredictionLogWriter(
        "postgresql://postgres@127.0.0.1:1/none", max_queue=10, flush_interval_s=0.05, stop_timeout_s=0.3
    )
    log.start()
    row = LogRow(datetime.now(UTC), "u", {}, 0.5, "streamflow_churn", "1")
    for _ in range(1000):
        log.submit([row])
    log.stop()
    assert log.written == 0 and log.dropped == 1000


def test_body_size_limit_rejects_large_bodies_with_400():
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"size": len(await request.body())})

    app = BodySizeLimit(Starlette(routes=[Route("/", echo, methods=["POST"])]), max_bytes=100)
    client = TestClient(app)
    assert client.post("/", content=b"x" * 100).json() == {"size": 100}
    too_big = client.post("/", content=b"x" * 101)
    assert too_big.status_code == 400 and too_big.json()["error"] == "request_too_large"

    def chunks(n):
        yield from (b"x" * 50 for _ in range(n))

    assert client.post("/", content=chunks(2)).json() == {"size": 100}
    assert client.post("/", content=chunks(3)).status_code == 400


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, None),
        ({"content-type": "application/json"}, None),
        ({"content-type": "Application/JSON; charset=UTF-8"}, None),
        ({"content-type": "multipart/form-data"}, "unsupported_media_type"),
        ({"content-type": "multipart/form-data; boundary=x"}, "unsupported_media_type"),
        ({"content-type": "application/x-www-form-urlencoded"}, "unsupported_media_type"),
        ({"content-type": "text/plain"}, "unsupported_media_type"),
        ({"content-type": "application/json; charset=latin-1"}, "unsupported_charset"),
        ({"content-type": "application/json", "content-encoding": "gzip"}, "unsupported_content_encoding"),
    ],
)
def test_json_body_only_lets_json_through_and_answers_415_with_the_reason_otherwise(headers, error):
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse(await request.json())

    client = TestClient(JsonBodyOnly(Starlette(routes=[Route("/", echo, methods=["POST"])])))
    answer = client.post("/", content=b'{"user_id": "7590-VHVEG"}', headers=headers)
    if error is None:
        assert answer.status_code == 200 and answer.json() == {"user_id": "7590-VHVEG"}
    else:
        assert answer.status_code == 415 and answer.json()["error"] == error


def test_serving_requirements_are_the_lock_pins_of_the_serving_closure():
    from pathlib import Path

    from streamflow_mlops.platform.bento import read_pins, serving_requirements

    lock = Path(__file__).resolve().parents[2] / "requirements.txt"
    pins = read_pins(lock)
    serving_pins = serving_requirements(lock)
    assert set(serving_pins) <= set(pins.values())
    names = {line.split("==")[0].lower() for line in serving_pins}
    assert {"bentoml", "feast", "mlflow", "scikit-learn", "pandas", "psycopg", "pydantic-settings"} <= names
    assert not any(name.startswith(("apache-airflow", "great-expectations", "evidently")) for name in names)
    with pytest.raises(ValueError):
        serving_requirements(lock, roots=["no-such-package-here"])


def test_serving_closure_follows_the_extras_the_project_declares():
    from pathlib import Path

    from streamflow_mlops.platform.bento import requirement_closure, serving_requirements

    # pyproject.toml declares feast[postgres,redis]: the bento must carry both online/offline drivers.
    feast = requirement_closure(["feast"])
    assert {"redis", "hiredis", "psycopg-pool"} <= feast
    # Extras nobody asked for stay out (feast[gcp] would bring BigQuery).
    assert "google-cloud-bigquery" not in feast
    assert "redis" in requirement_closure(["feast[redis]"]) and "redis" not in requirement_closure(["pandas"])
    lock = Path(__file__).resolve().parents[2] / "requirements.txt"
    names = {line.split("==")[0].lower() for line in serving_requirements(lock)}
    assert {"redis", "hiredis"} <= names


def test_runtime_is_not_ready_while_the_online_store_cannot_answer(tmp_path):
    """Issue 29.4: the registry (Postgres) answering is not enough: with the online store (Redis in
    compose) down /readyz is false, and true again once it answers, without a restart."""
    settings = offline_settings(tmp_path)
    reader = TableReader(ROWS)
    runtime = ServiceRuntime(
        settings,
        read_champion_version=lambda: "1",
        reader_factory=lambda _settings: reader,
        log_writer=PredictionLogWriter(settings.db_url),
    )
    runtime.holder.swap(champion("1"))
    runtime.require_reader()
    assert runtime.ready()
    reader.fail = True
    assert not runtime.ready()
    reader.fail = False
    assert runtime.ready()


def test_runtime_metrics_are_prometheus_text_labelled_with_the_worker(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from streamflow_mlops.serving.heap import GcPauses

    settings = offline_settings(tmp_path)
    runtime = ServiceRuntime(
        settings,
        read_champion_version=lambda: "1",
        reader_factory=lambda _settings: TableReader(ROWS),
        log_writer=PredictionLogWriter(settings.db_url),
        gc_pauses=GcPauses(),
    )
    runtime.holder.swap(champion("3"))
    families = {family.name: family for family in text_string_to_metric_families(runtime.metrics())}
    pid = str(os.getpid())
    for name in (
        "streamflow_prediction_log_written_rows",
        "streamflow_predict_batches",
        "streamflow_shadow_skipped_rows",
    ):
        assert families[name].type == "counter" and families[name].samples[0].labels == {"pid": pid}
    assert families["streamflow_champion_info"].samples[0].labels == {"pid": pid, "version": "3"}
    assert families["streamflow_shadow_info"].samples[0].labels == {"pid": pid, "version": ""}
    assert len(families["streamflow_gc_pause_seconds"].samples) == 3
