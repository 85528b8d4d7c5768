"""Shadow scoring without HTTP, Feast or MLflow: which version, the scores beside the champion's,
the bounded queue that never holds a request, and the agreement figures of the drift check."""

from __future__ import annotations

import functools
import threading

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from streamflow_mlops.model.compiled import PipelineModel
from streamflow_mlops.monitoring.prediction_log import LogRow, PredictionLogWriter
from streamflow_mlops.monitoring.shadow_agreement import shadow_agreement
from streamflow_mlops.serving.champion import Champion, ModelHolder
from streamflow_mlops.serving.feature_reader import FeatureRef
from streamflow_mlops.serving.scoring import ChurnScorer
from streamflow_mlops.serving.shadow import ShadowScorer, ShadowWatcher, shadow_rows, shadow_target

FEATURES = ("monthly_fee", "net_service")
ROWS = {
    "0001-AAAAA": {"monthly_fee": 95.0, "net_service": "Fiber optic"},
    "0002-BBBBB": {"monthly_fee": 12.0, "net_service": "DSL"},
    "0004-DDDDD": {"monthly_fee": 60.0, "net_service": "No"},
}
UNREACHABLE_DB = "postgresql://127.0.0.1:1/none"


class TableReader:
    """An online store held in a dict (the Feast readers' contract)."""

    def feature_refs(self, feature_service: str) -> tuple[FeatureRef, ...]:
        return tuple(FeatureRef("view", name) for name in FEATURES)

    def read(self, user_ids, feature_service):
        return {u: {n: ROWS.get(u, {}).get(n) for n in FEATURES} for u in user_ids}

    def forget_refs(self) -> None:
        """Nothing cached."""


@functools.cache
def fitted(labels: tuple[int, ...], columns: tuple[str, ...] = FEATURES) -> PipelineModel:
    frame = pd.DataFrame(
        {
            "monthly_fee": [10.0, 90.0, 20.0, 80.0],
            "net_service": ["DSL", "Fiber optic", "No", "Fiber optic"],
            "watch_hours_30d": [30.0, 2.0, 25.0, 4.0],
        }
    )[list(columns)]
    categorical = [c for c in columns if c == "net_service"]
    pipeline = Pipeline(
        [
            ("encode", ColumnTransformer([("cat", OneHotEncoder(), categorical)], remainder="passthrough")),
            ("model", LogisticRegression()),
        ]
    )
    pipeline.fit(frame, list(labels))
    return PipelineModel(pipeline, columns)


def model(version: str, labels: tuple[int, ...] = (0, 1, 0, 1), columns: tuple[str, ...] = FEATURES) -> Champion:
    return Champion("streamflow_churn", version, f"models:/streamflow_churn/{version}", 0.5, "churn_model_v1",
                    fitted(labels, columns))  # fmt: skip


CHAMPION = model("1")
# Trained on the opposite labels: its probabilities differ from the champion's on every row.
CHALLENGER = model("2", labels=(1, 0, 1, 0))


def log_rows(users=("0001-AAAAA", "0002-BBBBB")) -> list[LogRow]:
    from datetime import UTC, datetime

    now = datetime(2026, 12, 7, tzinfo=UTC)
    return [LogRow(now, u, ROWS[u], 0.5, "streamflow_churn", "1") for u in users]


def queued(log: PredictionLogWriter) -> list[LogRow]:
    return log._take_batch(0.0)


# ------------------------------------------------------------------------------ which version


@pytest.mark.parametrize(
    ("alias", "champion", "expected"),
    [(None, "1", None), ("1", "1", None), ("2", "1", "2"), ("2", None, "2")],
)
def test_the_shadow_is_the_alias_unless_absent_or_the_champion(alias, champion, expected):
    assert shadow_target(alias, champion) == expected


def test_watcher_follows_the_alias_and_drops_the_shadow_when_it_goes_or_becomes_champion():
    alias: dict[str, str | None] = {"version": None}
    loads: list[str] = []

    def load(version: str) -> Champion:
        loads.append(version)
        return model(version, labels=(1, 0, 1, 0))

    watcher = ShadowWatcher(lambda: alias["version"], load)
    assert not watcher.poll_once("1") and watcher.shadow is None
    alias["version"] = "2"
    assert watcher.poll_once("1") and watcher.shadow.version == "2"
    assert not watcher.poll_once("1") and loads == ["2"]  # loaded once, kept while the alias stays
    assert watcher.poll_once("2") and watcher.shadow is None  # promoted: it is the champion now
    alias["version"] = "3"
    assert watcher.poll_once("2") and watcher.shadow.version == "3"
    alias["version"] = None
    assert watcher.poll_once("2") and watcher.shadow is None


def test_watcher_keeps_its_shadow_while_mlflow_is_down_but_drops_it_when_the_alias_moves_to_a_broken_version():
    alias = {"version": "2"}
    down = {"now": False}

    def read() -> str | None:
        if down["now"]:
            raise ConnectionError("mlflow down")
        return alias["version"]

    def load(version: str) -> Champion:
        if version == "3":
            raise OSError("artifact missing")
        return CHALLENGER

    watcher = ShadowWatcher(read, load)
    watcher.poll_once("1")
    down["now"] = True
    assert not watcher.poll_once("1") and watcher.shadow is CHALLENGER and "mlflow down" in watcher.last_error
    down["now"] = False
    alias["version"] = "3"
    assert watcher.poll_once("1") and watcher.shadow is None and "artifact missing" in watcher.last_error


# ------------------------------------------------------------------------------ scores beside the champion's


def test_shadow_rows_carry_the_shadow_version_and_its_own_probabilities():
    rows = log_rows()
    filled, skipped = shadow_rows(rows, CHALLENGER)
    expected = CHALLENGER.model.predict_proba([r.features for r in rows])
    assert skipped == 0
    assert [r.shadow_version for r in filled] == ["2", "2"]
    assert [r.shadow_probability for r in filled] == [float(p) for p in expected]
    assert [(r.churn_probability, r.model_version, r.features) for r in filled] == [
        (r.churn_probability, r.model_version, r.features) for r in rows
    ]


def test_rows_lacking_a_feature_the_shadow_needs_are_logged_without_its_score():
    wider = model("3", columns=(*FEATURES, "watch_hours_30d"))  # another FeatureService's model
    rows = log_rows()
    rows[1] = LogRow(rows[1].predicted_at, "0009-WIDER", {**ROWS["0002-BBBBB"], "watch_hours_30d": 3.0}, 0.5,
                     "streamflow_churn", "1")  # fmt: skip
    filled, skipped = shadow_rows(rows, wider)
    assert skipped == 1 and filled[0].shadow_version is None and filled[0].shadow_probability is None
    assert filled[1].shadow_version == "3"
    assert filled[1].shadow_probability == pytest.approx(float(wider.model.predict_proba([rows[1].features])[0]))


def test_without_a_shadow_rows_go_straight_to_the_log():
    log = PredictionLogWriter(UNREACHABLE_DB)
    sink = ShadowScorer(log, lambda: None)
    sink.submit(log_rows())
    assert [r.shadow_version for r in queued(log)] == [None, None]


def test_the_answer_stays_the_champions_and_the_log_gets_both_probabilities():
    log = PredictionLogWriter(UNREACHABLE_DB)
    holder = ModelHolder()
    holder.swap(CHAMPION)
    sink = ShadowScorer(log, lambda: CHALLENGER)
    scorer = ChurnScorer(holder, TableReader(), sink)
    users = ["0001-AAAAA", "0002-BBBBB", "0004-DDDDD"]
    answers = scorer.score(users)
    champion_scores = CHAMPION.model.predict_proba([ROWS[u] for u in users])
    assert [a["model"]["version"] for a in answers] == ["1"] * 3
    assert [a["churn_probability"] for a in answers] == [float(p) for p in champion_scores]
    assert queued(log) == []  # scored by the shadow's thread, not by the request's
    assert sink.score_pending() == 3
    rows = queued(log)
    challenger_scores = CHALLENGER.model.predict_proba([ROWS[u] for u in users])
    assert [(r.user_id, r.model_version, r.shadow_version) for r in rows] == [(u, "1", "2") for u in users]
    assert [r.churn_probability for r in rows] == [float(p) for p in champion_scores]
    assert [r.shadow_probability for r in rows] == [float(p) for p in challenger_scores]
    assert sink.scored == 3 and sink.dropped == 0


def test_a_full_shadow_queue_drops_the_shadow_score_never_the_row_nor_blocks():
    log = PredictionLogWriter(UNREACHABLE_DB)
    sink = ShadowScorer(log, lambda: CHALLENGER, max_batches=1)
    sink.submit(log_rows(("0001-AAAAA",)))
    sink.submit(log_rows(("0002-BBBBB", "0004-DDDDD")))  # queue full: logged now, unscored, counted
    assert sink.dropped == 2
    assert [(r.user_id, r.shadow_version) for r in queued(log)] == [("0002-BBBBB", None), ("0004-DDDDD", None)]
    sink.score_pending()
    assert [(r.user_id, r.shadow_version) for r in queued(log)] == [("0001-AAAAA", "2")]


def test_a_failing_shadow_loses_no_row_and_stop_passes_on_what_is_queued():
    class Broken:
        columns = list(FEATURES)

        def predict_proba(self, rows):
            raise RuntimeError("bad model")

    broken = Champion("streamflow_churn", "5", "models:/streamflow_churn/5", 0.5, "churn_model_v1", Broken())
    log = PredictionLogWriter(UNREACHABLE_DB)
    sink = ShadowScorer(log, lambda: broken)
    sink.start()
    sink.submit(log_rows())
    sink.stop()
    assert [(r.user_id, r.shadow_version) for r in queued(log)] == [("0001-AAAAA", None), ("0002-BBBBB", None)]
    assert sink.skipped == 2 and sink.scored == 0


def test_submitting_never_waits_for_the_shadow_thread():
    release = threading.Event()

    class Slow:
        columns = list(FEATURES)

        def predict_proba(self, rows):
            release.wait(5)
            return np.full(len(rows), 0.5)

    slow = Champion("streamflow_churn", "6", "models:/streamflow_churn/6", 0.5, "churn_model_v1", Slow())
    log = PredictionLogWriter(UNREACHABLE_DB)
    sink = ShadowScorer(log, lambda: slow, max_batches=4)
    sink.start()
    try:
        import time

        started = time.perf_counter()
        for _ in range(50):
            sink.submit(log_rows(("0001-AAAAA",)))
        assert time.perf_counter() - started < 0.5
        assert sink.dropped >= 50 - 4 - 16  # at most the queue and the batch in the thread's hands
    finally:
        release.set()
        sink.stop()
    assert len(queued(log)) == 50  # every row logged, scored or not


# ------------------------------------------------------------------------------ agreement on served traffic


def test_agreement_figures_on_hand_computed_scores():
    champion = np.array([0.10, 0.40, 0.60, 0.90])
    shadow = np.array([0.20, 0.55, 0.50, 0.80])
    figures = shadow_agreement(champion, shadow, champion_threshold=0.5, shadow_threshold=0.5)
    assert figures["rows"] == 4
    assert figures["mean_abs_difference"] == pytest.approx((0.10 + 0.15 + 0.10 + 0.10) / 4)
    assert figures["max_abs_difference"] == pytest.approx(0.15)
    assert figures["mean_difference"] == pytest.approx((0.10 + 0.15 - 0.10 - 0.10) / 4)
    # Decisions: champion F F T T, shadow F T T T.
    assert figures["decision_agreement"] == pytest.approx(0.75)
    assert figures["champion_churn_rate"] == pytest.approx(0.5) and figures["shadow_churn_rate"] == pytest.approx(0.75)
    assert figures["correlation"] == pytest.approx(np.corrcoef(champion, shadow)[0, 1])


def test_each_model_decides_at_its_own_threshold():
    champion = np.array([0.30, 0.30])
    shadow = np.array([0.30, 0.10])
    figures = shadow_agreement(champion, shadow, champion_threshold=0.25, shadow_threshold=0.2)
    assert figures["decision_agreement"] == pytest.approx(0.5)


def test_agreement_without_rows_or_variance_says_not_measured():
    empty = shadow_agreement(np.array([]), np.array([]), 0.5, 0.5)
    assert empty["rows"] == 0 and all(v is None for k, v in empty.items() if k != "rows")
    constant = shadow_agreement(np.array([0.3, 0.3, 0.3]), np.array([0.1, 0.2, 0.3]), 0.5, 0.5)
    assert constant["correlation"] is None and constant["decision_agreement"] == 1.0
    with pytest.raises(ValueError):
        shadow_agreement(np.array([0.1]), np.array([0.1, 0.2]), 0.5, 0.5)


def test_the_runtime_follows_the_shadow_alias_beside_the_champion(tmp_path):
    from streamflow_mlops.serving.runtime import ServiceRuntime
    from tests.conftest import offline_settings

    alias: dict[str, str | None] = {"version": "2"}
    settled: list[str | None] = []
    watcher = ShadowWatcher(lambda: alias["version"], lambda version: CHALLENGER)
    log = PredictionLogWriter(UNREACHABLE_DB)
    runtime = ServiceRuntime(
        offline_settings(tmp_path),
        read_champion_version=lambda: "1",
        reader_factory=lambda _settings: TableReader(),
        log_writer=log,
        shadow_watcher=watcher,
        after_swap=lambda: settled.append(watcher.shadow.version if watcher.shadow else None),
    )
    runtime.watcher.load = lambda tag: CHAMPION
    runtime.poll()
    assert runtime.holder.champion is CHAMPION and watcher.shadow is CHALLENGER
    assert settled == ["2"]  # the new models' objects frozen once
    [answer] = runtime.scorer.score(["0001-AAAAA"])
    assert answer["model"]["version"] == "1"
    runtime.shadow.score_pending()
    [row] = queued(log)
    assert (row.model_version, row.shadow_version) == ("1", "2")
    alias["version"] = "1"  # promoted: the champion is not its own shadow
    runtime.poll()
    assert watcher.shadow is None and settled == ["2", None]
    runtime.scorer.score(["0001-AAAAA"])
    [row] = queued(log)
    assert row.shadow_version is None


def test_a_runtime_given_its_own_champion_source_follows_no_shadow(tmp_path):
    from streamflow_mlops.serving.runtime import ServiceRuntime
    from tests.conftest import offline_settings

    runtime = ServiceRuntime(offline_settings(tmp_path), read_champion_version=lambda: None)
    assert runtime.shadow_watcher is None
