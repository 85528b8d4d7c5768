"""Every DAG executed by Airflow itself with `dag.test()`: real task runs through the task SDK and
the in-process execution API (XCom hand-over, params, short-circuit skips, asset events, retries),
on a Postgres metadata database and a Postgres warehouse of the test server.

One lifecycle is run once for the module, in the order a platform lives it, and each test reads
the outcome of its step; the failing runs that change nothing run inside their own tests.
"""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from dataclasses import dataclass

import psycopg
import pytest

from streamflow_mlops.config.settings import (
    CHAMPION_ALIAS,
    FEATURE_SERVICE,
    REGISTERED_MODEL,
    get_settings,
    replace_database,
    with_driver,
)
from streamflow_mlops.synthetic.generate import DropSpec, build_drop, default_drift, write_drop
from tests.conftest import REPO, bentoml_home
from tests.receivers import RECIPIENTS, notification_env, smtp_server, webhook_receiver

pytestmark = pytest.mark.slow

DAGS = REPO / "dags"
USERS = 600
# A champion that only knows the price and the plan: the DAG's challenger beats it on the same rows.
WEAK_FEATURES = ["monthly_fee", "paperless_billing", "net_service"]
RAW = ("users", "subscriptions", "usage_agg_30d", "payments_agg_90d", "support_agg_90d", "labels")


@dataclass
class Run:
    """What a finished `dag.test()` run left in Airflow's metadata database."""

    state: str
    tasks: dict[str, str]
    tries: dict[str, int]
    events: dict[str, list[dict]]


def finished(dr) -> Run:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    tis = dr.get_task_instances()
    with create_session() as session:
        rows = session.query(AssetEvent).filter_by(source_dag_id=dr.dag_id, source_run_id=dr.run_id).all()
        events: dict[str, list[dict]] = {}
        for row in rows:
            events.setdefault(row.asset.name, []).append(dict(row.extra))
    return Run(
        state=str(dr.state),
        tasks={ti.task_id: str(ti.state) for ti in tis},
        tries={ti.task_id: ti.try_number for ti in tis},
        events=events,
    )


def warehouse_state(db_url: str) -> dict[str, list]:
    with psycopg.connect(db_url) as conn:
        return {t: conn.execute(f"SELECT * FROM streamflow.{t} ORDER BY as_of, user_id").fetchall() for t in RAW}


@pytest.fixture(scope="module")
def platform(pg_server, tmp_path_factory):
    """A warehouse, an Airflow metadata database, a state dir, MLflow and BentoML stores, the drops,
    and notifications on: mail to a local SMTP server, JSON to a local webhook receiver."""
    receivers = ExitStack()
    smtp_port, mail = receivers.enter_context(smtp_server())
    webhook_url, posts = receivers.enter_context(webhook_receiver())
    home = tmp_path_factory.mktemp("dag_runs")
    names = {kind: f"t_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("warehouse", "airflow")}
    with psycopg.connect(pg_server, autocommit=True) as conn:
        for name in names.values():
            conn.execute(f'CREATE DATABASE "{name}"')
    warehouse = replace_database(pg_server, names["warehouse"])
    env = {
        "STREAMFLOW_DB_URL": warehouse,
        "STREAMFLOW_HOME": str(home / "state"),
        "STREAMFLOW_DROPS_DIR": str(home / "drops"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "BENTOML_HOME": str(home / "bentoml"),
        "AIRFLOW_CONN_STREAMFLOW_WAREHOUSE": warehouse,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": with_driver(replace_database(pg_server, names["airflow"]), "psycopg2"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        **notification_env(smtp_port, webhook_url),
    }
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    # The tasks run in this process, and configure_mlflow sets MLflow's process-wide URIs and exports
    # MLFLOW_REGISTRY_URI. monkeypatch only undoes a variable it has recorded, and delenv of an unset
    # one records nothing: setenv first (recording "unset"), then delenv, so that undo() removes what
    # the tasks export; otherwise the e2e test's MlflowClient(uri) would read this module's registry.
    patch.setenv("MLFLOW_REGISTRY_URI", "")
    for key in ("STREAMFLOW_FEAST_ONLINE_STORE", "MLFLOW_REGISTRY_URI"):
        patch.delenv(key, raising=False)
    get_settings.cache_clear()

    # Airflow reads its database and DAG folder into module globals when first imported (another
    # test module may have done so already): re-read them, then create the schema.
    from airflow import settings as airflow_settings
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.db import initdb

    airflow_settings.configure_vars()
    airflow_settings.reconfigure_orm()
    initdb()

    for month in (0, 1):
        write_drop(DropSpec(month, users=USERS, drift=default_drift(month)), home / "drops")
    write_drop(DropSpec(2, users=USERS, broken="negative_fee"), home / "drops")
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    try:
        with bentoml_home(home / "bentoml"):
            yield {"dags": bag.dags, "settings": get_settings(), "mail": mail, "posts": posts}
    finally:
        import mlflow

        # MLflow's process-wide URIs, set by configure_mlflow in the in-process tasks.
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        airflow_settings.dispose_orm()
        patch.undo()
        airflow_settings.configure_vars()
        airflow_settings.configure_orm()
        get_settings.cache_clear()
        receivers.close()
        with psycopg.connect(pg_server, autocommit=True) as conn:
            for name in names.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def register_weak_champion() -> str:
    """Version 1: a logistic regression on three features, promoted as the first champion."""
    from streamflow_mlops.config.months import Month
    from streamflow_mlops.model.training import frame_from_tables, train_model
    from streamflow_mlops.pipelines.champion import promote_and_import
    from streamflow_mlops.pipelines.train import evaluate_and_decide, log_challenger

    spec = DropSpec(0, users=USERS)
    tables, _ = build_drop(spec)
    trained = train_model(frame_from_tables(tables, spec.as_of), seed=5, classifier="logreg", features=WEAK_FEATURES)
    weak = log_challenger(trained, month=Month(spec.month), feature_service=FEATURE_SERVICE)
    return promote_and_import(evaluate_and_decide(weak, delta=0.005))["version"]


def champion() -> str:
    from mlflow import MlflowClient

    from streamflow_mlops.model.tracking import configure_mlflow

    client: MlflowClient = configure_mlflow()
    return str(client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS).version)


def version_tags(version: str) -> dict[str, str]:
    from streamflow_mlops.model.tracking import configure_mlflow

    return configure_mlflow().get_model_version(REGISTERED_MODEL, version).tags


@pytest.fixture(scope="module")
def lifecycle(platform):
    """The runs of one platform's life, by hand as a user would trigger them, in order."""
    dags = platform["dags"]

    def run(dag_id: str, **conf) -> Run:
        return finished(dags[dag_id].test(run_conf=conf))

    runs = {"ingest": run("streamflow_ingest", month="month_000")}
    runs["features"] = run("streamflow_features", month="month_000")
    runs["drift_first"] = run("streamflow_drift", month="month_000")
    runs["weak_champion"] = register_weak_champion()
    runs["train_promote"] = run("streamflow_train", month="month_000")
    runs["drift_skip"] = run("streamflow_drift", month="month_000")
    runs["ingest_month_001"] = run("streamflow_ingest", month="month_001")
    runs["features_month_001"] = run("streamflow_features", month="month_001")
    runs["drift_retrain"] = run("streamflow_drift", month="month_001")
    # With approval=human a kept champion has nothing to review: the run does not wait.
    runs["train_keep"] = run("streamflow_train", month="month_001", delta=1.0, approval="human")
    runs["champion_after_keep"] = champion()
    runs["rollback_previous"] = run("streamflow_rollback", reason="the retention team saw odd scores")
    runs["champion_after_rollback"] = champion()
    runs["rollback_explicit"] = run("streamflow_rollback", version="3", reason="roll forward")
    runs["champion_after_explicit"] = champion()
    # Re-deliveries: the same month_000 files again, and an older month's features re-run.
    runs["ingest_unchanged"] = run("streamflow_ingest", month="month_000")
    runs["features_older"] = run("streamflow_features", month="month_000")
    return runs


def test_ingest_loads_a_good_month_and_emits_the_snapshots(lifecycle, platform):
    run = lifecycle["ingest"]
    assert run.state == "success" and run.tasks == {"validate": "success", "load": "success"}
    assert run.events == {"streamflow_snapshots": [{"month": "month_000", "as_of": "2024-01-31"}]}
    with psycopg.connect(platform["settings"].db_url) as conn:
        per_month = conn.execute("SELECT count(*) FROM streamflow.usage_agg_30d_snapshots GROUP BY as_of ORDER BY 1")
        assert [n for (n,) in per_month] == [USERS, USERS]  # month_000, and month_001 from the second run


def test_ingest_rejects_a_broken_month_at_once_and_changes_nothing(lifecycle, platform, capfd):
    db_url = platform["settings"].db_url
    before = warehouse_state(db_url)

    run = finished(platform["dags"]["streamflow_ingest"].test(run_conf={"month": "month_002"}))

    assert run.state == "failed"
    assert run.tasks == {"validate": "failed", "load": "upstream_failed"}
    assert run.tries["validate"] == 1, "a rejected batch must not be retried"
    assert run.events == {}
    assert "expect_column_values_to_be_between(monthly_fee" in capfd.readouterr().out
    assert warehouse_state(db_url) == before
    with psycopg.connect(db_url) as conn:
        status, failed = conn.execute(
            "SELECT status, failed_expectations FROM streamflow.ingestion_runs WHERE month = 'month_002'"
        ).fetchone()
    assert status == "rejected" and "monthly_fee" in str(failed)
    # The rejection told by mail and webhook, with its reasons and where the drop went.
    (mail,) = platform["mail"].wait_for(lambda m: "month_002 rejected" in m.subject)
    assert "expect_column_values_to_be_between(monthly_fee" in mail.body and "quarantine" in mail.body
    assert sorted(mail.recipients) == sorted(RECIPIENTS)
    (post,) = platform["posts"].wait_for(lambda p: p["event"] == "batch_rejected")
    assert post["facts"]["month"] == "month_002" and any("monthly_fee" in r for r in post["facts"]["reasons"])


def test_an_unchanged_redelivery_publishes_nothing(lifecycle, platform):
    run = lifecycle["ingest_unchanged"]
    assert run.state == "success" and run.tasks == {"validate": "success", "load": "skipped"}
    assert run.events == {}, "an unchanged drop must not start features, drift and training again"
    with psycopg.connect(platform["settings"].db_url) as conn:
        statuses = [
            s for (s,) in conn.execute("SELECT status FROM streamflow.ingestion_runs WHERE month = 'month_000'")
        ]
    assert statuses == ["success", "unchanged"]


def test_an_older_month_never_moves_the_online_store_back(lifecycle):
    run = lifecycle["features_older"]
    assert run.tasks == {"apply": "success", "materialize": "skipped", "check_parity": "skipped"}
    assert run.events == {}


def test_features_materialize_the_month_and_emit_it(lifecycle):
    run = lifecycle["features"]
    assert run.state == "success"
    assert run.tasks == {"apply": "success", "materialize": "success", "check_parity": "success"}
    assert run.events == {"streamflow_features": [{"month": "month_000", "as_of": "2024-01-31"}]}


def test_drift_without_a_champion_requests_the_first_training(lifecycle):
    run = lifecycle["drift_first"]
    assert run.tasks == {"measure_drift": "success", "needs_retrain": "success", "request_retrain": "success"}
    assert run.events == {
        "streamflow_retrain_request": [{"month": "month_000", "reason": "no champion yet: first training"}]
    }


def test_drift_below_the_threshold_skips_the_request(lifecycle):
    run = lifecycle["drift_skip"]  # month_000 against the champion's own month_000: nothing drifted
    assert run.state == "success"
    assert run.tasks == {"measure_drift": "success", "needs_retrain": "success", "request_retrain": "skipped"}
    assert run.events == {}, "a skipped gate must emit no retrain request"


def test_drift_past_the_threshold_requests_a_retrain_for_the_month(lifecycle):
    run = lifecycle["drift_retrain"]
    assert run.tasks["request_retrain"] == "success"
    (request,) = run.events["streamflow_retrain_request"]
    assert request["month"] == "month_001" and request["reason"].startswith("drift: drift share")


def test_train_promotes_a_better_challenger_and_emits_the_champion(lifecycle):
    run = lifecycle["train_promote"]
    weak = lifecycle["weak_champion"]
    # approval is automatic (the default): the review is skipped and the promotion goes ahead.
    assert run.tasks == {
        "train_challenger": "success",
        "compare_with_champion": "success",
        "review": "skipped",
        "promote": "success",
    }
    (event,) = run.events["streamflow_champion"]
    assert event["month"] == "month_000" and event["version"] != weak
    tags = version_tags(event["version"])
    assert tags["decision"] == "promoted" and tags["previous_champion"] == weak


def test_train_keeps_the_champion_when_the_gain_is_below_delta(lifecycle):
    run = lifecycle["train_keep"]
    promoted = lifecycle["train_promote"].events["streamflow_champion"][0]["version"]
    assert run.state == "success"
    assert run.tasks == {
        "train_challenger": "success",
        "compare_with_champion": "success",
        "review": "skipped",
        "promote": "skipped",
    }
    assert run.events == {}
    assert lifecycle["champion_after_keep"] == promoted
    tags = version_tags("3")
    assert tags["month"] == "month_001", "a manual run trains on its month param"
    assert tags["decision"] == "keep_champion" and "below delta 1.0000" in tags["reason"]


def test_rollback_without_a_version_returns_to_the_previous_champion(lifecycle):
    run = lifecycle["rollback_previous"]
    weak = lifecycle["weak_champion"]
    assert run.tasks == {"rollback": "success"}
    assert run.events == {"streamflow_champion": [{"version": weak, "month": "month_000"}]}
    assert lifecycle["champion_after_rollback"] == weak
    assert version_tags(weak)["rollback_reason"] == "the retention team saw odd scores"


def test_rollback_to_an_explicit_version(lifecycle):
    run = lifecycle["rollback_explicit"]
    assert run.tasks == {"rollback": "success"}
    assert run.events == {"streamflow_champion": [{"version": "3", "month": "month_001"}]}
    assert lifecycle["champion_after_explicit"] == "3"


def test_notifications_tell_each_retrain_request_promotion_and_rollback(lifecycle, platform):
    """One message per event that happened (by mail and by webhook), with its facts; none for the
    runs that requested, promoted or moved nothing."""
    mail, posts = platform["mail"], platform["posts"]
    weak = lifecycle["weak_champion"]
    promoted = lifecycle["train_promote"].events["streamflow_champion"][0]["version"]

    requests = mail.wait_for(lambda m: "retrain requested" in m.subject)
    assert [m.subject for m in requests] == [
        "[StreamFlow] month_000: retrain requested (first training)",
        requests[1].subject,
    ], "drift_skip requested nothing and must tell nothing"
    assert requests[1].subject.startswith("[StreamFlow] month_001: retrain requested (drift")
    assert "drift share 0." in requests[1].body and "(threshold 0.300)" in requests[1].body
    (drift_post,) = posts.wait_for(lambda p: p["event"] == "retrain_request" and p["facts"]["month"] == "month_001")
    assert "drift" in drift_post["facts"]["causes"] and drift_post["facts"]["drift_share"] >= 0.3

    (promotion,) = mail.wait_for(lambda m: "is the champion" in m.subject and "rolled back" not in m.subject)
    assert promotion.subject == f"[StreamFlow] v{promoted} (month_000) is the champion, replacing v{weak}"
    assert "gain +" in promotion.body and "promoted by the rule (approval: auto)" in promotion.body

    rollbacks = mail.wait_for(lambda m: "rolled back" in m.subject)
    assert [m.subject for m in rollbacks] == [
        f"[StreamFlow] rolled back: v{weak} (month_000) is the champion again, replacing v{promoted}",
        f"[StreamFlow] rolled back: v3 (month_001) is the champion again, replacing v{weak}",
    ]
    assert "the retention team saw odd scores" in rollbacks[0].body and "roll forward" in rollbacks[1].body
    assert [p["facts"]["version"] for p in posts.wait_for(lambda p: p["event"] == "rollback")] == [weak, "3"]


def test_rollback_to_an_unknown_version_fails_at_once_with_the_versions(lifecycle, platform, capfd):
    run = finished(platform["dags"]["streamflow_rollback"].test(run_conf={"version": "99"}))

    assert run.state == "failed" and run.tasks == {"rollback": "failed"}
    assert run.tries["rollback"] == 1, "a missing version must not be retried"
    assert "has no version '99'; versions that exist: ['1', '2', '3']" in capfd.readouterr().out
    assert champion() == lifecycle["champion_after_explicit"]


def test_a_waiting_review_is_told_and_the_approved_promotion_names_the_reviewer(lifecycle, platform, monkeypatch):
    """approval=human through dag.test(): the review's notifier sends the request before the task
    waits; a person answers as in Required Actions, through the REST API's hitlDetails route (Airflow's
    own API app, in this process, on the same metadata database), and the promotion's message names
    them. After the lifecycle's own tests: it moves the champion."""
    import threading
    import time

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from fastapi.testclient import TestClient

    mail, posts, dags = platform["mail"], platform["posts"], platform["dags"]
    weak = lifecycle["weak_champion"]
    rollback = {"version": weak, "reason": "a reviewed promotion follows"}
    assert finished(dags["streamflow_rollback"].test(run_conf=rollback)).state == "success"
    # The API's simple auth manager answers as an anonymous admin, as `airflow standalone` can.
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    answered: list[int] = []
    done = threading.Event()

    def review_as_a_person() -> None:
        from airflow.api_fastapi.app import create_app

        # The request's message, or the run ending without one (nothing to answer); a run still
        # waiting after 10 minutes without a message is failed below, or dag.test() would wait forever.
        deadline = time.monotonic() + 600
        while not (waiting := mail.wait_for(lambda m: "approval waiting" in m.subject, timeout=1)):
            if done.is_set():
                return
            if time.monotonic() > deadline:
                break
        with create_session() as session:
            run_ids = [r.run_id for r in session.query(DagRun).filter_by(dag_id="streamflow_train", state="running")]
        try:
            if waiting and len(run_ids) == 1:
                response = TestClient(create_app("core")).patch(
                    f"/api/v2/dags/streamflow_train/dagRuns/{run_ids[0]}/taskInstances/review/-1/hitlDetails",
                    json={"chosen_options": ["Approve"], "params_input": {"comment": "impact checked"}},
                )
                answered.append(response.status_code)
        finally:
            if answered != [200]:
                with create_session() as session:
                    session.query(DagRun).filter(DagRun.run_id.in_(run_ids)).update({"state": "failed"})

    reviewer = threading.Thread(target=review_as_a_person, daemon=True)
    reviewer.start()
    # Every param given: dag.test() keeps the values of the DAG object's previous run for those left out.
    conf = {
        "month": "month_001",
        "seed": 7,
        "delta": 0.005,
        "force": False,
        "approval": "human",
        "approval_timeout": 168,
    }
    run = finished(dags["streamflow_train"].test(run_conf=conf))
    done.set()
    reviewer.join(timeout=60)

    assert answered == [200]
    assert run.tasks["review"] == "success" and run.tasks["promote"] == "success"
    (event,) = run.events["streamflow_champion"]
    (request,) = mail.wait_for(lambda m: "approval waiting" in m.subject)
    assert request.subject == f"[StreamFlow] approval waiting: promote month_001 challenger v{event['version']}?"
    assert f"vs champion v{weak}" in request.body and "Without an answer by " in request.body
    assert "What the switch changes in month_001" in request.body, "the request the reviewer sees, in full"
    assert "/tasks/review/required_actions" in request.body
    (post,) = posts.wait_for(lambda p: p["event"] == "approval_waiting")
    assert post["facts"]["version"] == event["version"] and post["facts"]["champion_version"] == weak
    (promotion,) = mail.wait_for(lambda m: m.subject.startswith(f"[StreamFlow] v{event['version']} (month_001)"))
    assert f"replacing v{weak}" in promotion.subject
    assert "Approval: approved by Anonymous at " in promotion.body and ": impact checked" in promotion.body


@pytest.mark.parametrize(
    ("dag_id", "conf"),
    [
        ("streamflow_ingest", {"month": "2024-01"}),
        ("streamflow_train", {"delta": 2}),
        ("streamflow_drift", {"drift_threshold": -0.1}),
        ("streamflow_rollback", {"version": "v2"}),
    ],
)
def test_invalid_params_fail_before_any_task_runs(platform, dag_id, conf):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        platform["dags"][dag_id].test(run_conf=conf)


def test_a_nan_param_never_reaches_a_task(platform):
    """JSON-schema bounds let NaN through; Postgres' JSON column refuses it in the run's conf, and
    where another database stores it, `finite_number` fails the task (tests/dags/test_dag_defaults.py)."""
    from sqlalchemy.exc import DataError

    with pytest.raises(DataError, match="NaN"):
        platform["dags"]["streamflow_train"].test(run_conf={"month": "month_000", "delta": float("nan")})
