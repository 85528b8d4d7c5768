"""Champion/challenger, promotion, rollback and the BentoML import against a real MLflow registry
(sqlite in tmp_path) and a real BentoML store, with models really trained on a generated drop."""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest

from streamflow_mlops.config.holdout import is_eval_holdout
from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import FEATURE_NAMES
from streamflow_mlops.config.settings import CHAMPION_ALIAS, FEATURE_SERVICE, REGISTERED_MODEL
from streamflow_mlops.model.bento_import import bento_model_store
from streamflow_mlops.model.registry import UnknownVersionError, bento_tag, validation_rows
from streamflow_mlops.model.tracking import configure_mlflow
from streamflow_mlops.model.training import TrainedModel, frame_from_tables, train_model
from streamflow_mlops.pipelines.champion import promote_and_import, rollback_champion
from streamflow_mlops.pipelines.train import evaluate_and_decide, log_challenger
from streamflow_mlops.synthetic.generate import DropSpec, build_drop

pytestmark = pytest.mark.slow

SPEC = DropSpec(month=0, users=1500, seed=11)
# The months here are frames, never materialized through Feast: evaluate_and_decide runs with
# impact=False (the impact of a promotion on the month's list is checked in tests/e2e).
# A champion that only knows the price and the plan: clearly beatable on the same rows.
WEAK_FEATURES = ["monthly_fee", "paperless_billing", "net_service"]


@lru_cache(maxsize=1)
def month_000() -> pd.DataFrame:
    tables, _ = build_drop(SPEC)
    return frame_from_tables(tables, SPEC.as_of)


def register(trained: TrainedModel) -> dict:
    return log_challenger(trained, month=Month(0), feature_service=FEATURE_SERVICE)


def champion(client) -> str:
    return str(client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS).version)


def version_tags(client, version: str) -> dict[str, str]:
    return client.get_model_version(REGISTERED_MODEL, version).tags


def newest_bento(settings) -> tuple[str, dict[str, str]]:
    import bentoml

    with bento_model_store(settings):
        models = sorted(bentoml.models.list(REGISTERED_MODEL), key=lambda m: m.info.creation_time)
        return str(models[-1].tag), dict(models[-1].info.labels)


def test_first_promotion_skip_promotion_rollback_and_roll_forward(stack_env):
    import bentoml

    frame = month_000()
    client = configure_mlflow(stack_env)

    # 1. No champion yet: the first challenger is promoted and imported into BentoML.
    weak = register(train_model(frame, seed=5, classifier="logreg", features=WEAK_FEATURES))
    decision = evaluate_and_decide(weak, delta=0.005, impact=False)
    json.dumps(decision)
    assert decision["promote"] and "no champion" in decision["reason"]
    first = promote_and_import(decision)
    assert first == {**first, "version": weak["version"], "month": "month_000", "previous_version": None}
    assert champion(client) == weak["version"]
    assert version_tags(client, weak["version"])["decision"] == "promoted"
    tag, labels = newest_bento(stack_env)
    assert tag == bento_tag(weak["version"])
    assert labels["mlflow_version"] == weak["version"] and labels["run_id"] == weak["run_id"]
    assert labels["month"] == "month_000" and labels["as_of"] == "2024-01-31"
    assert labels["feature_service"] == FEATURE_SERVICE and float(labels["threshold"]) == weak["threshold"]

    # 2. The same model again: no gain, the champion stays, the reason is on the version.
    same = register(train_model(frame, seed=5, classifier="logreg", features=WEAK_FEATURES))
    kept = evaluate_and_decide(same, delta=0.005, impact=False)
    assert not kept["promote"] and kept["auc_gain"] == 0
    tags = version_tags(client, same["version"])
    assert tags["decision"] == "keep_champion" and "below delta" in tags["reason"]
    assert tags["champion_version"] == weak["version"]
    assert champion(client) == weak["version"]
    # Its model card: the version's description and artifacts of its run (model/model_card.py).
    card = client.get_model_version(REGISTERED_MODEL, same["version"]).description
    assert card.startswith(f"# {REGISTERED_MODEL} v{same['version']}") and "**Decision: keep_champion**" in card
    artifacts = {a.path for a in client.list_artifacts(same["run_id"], "model_card")}
    assert artifacts == {"model_card/model_card.md", "model_card/calibration.png"}

    # 3. A clearly better challenger, judged on its own validation rows, takes over.
    strong = register(train_model(frame, seed=5))
    better = evaluate_and_decide(strong, delta=0.005, impact=False)
    assert better["promote"], better["reason"]
    assert better["champion_auc"] < better["challenger_auc"] and better["auc_gain_ci"][0] > 0
    tags = version_tags(client, strong["version"])
    for key in ("challenger_auc", "champion_auc", "auc_gain", "auc_gain_ci_low", "auc_gain_ci_high", "reason"):
        assert tags[key], key
    # Issue 17: the rows that decided are the month's rows of the held-out users, unseen by both.
    assert tags["eval_population"] == "holdout-20%:month_000" and int(tags["eval_rows"]) == better["eval_rows"]
    decided = set(validation_rows(strong["run_id"])["user_id"])
    assert len(decided) == better["eval_rows"] and is_eval_holdout(sorted(decided)).all()
    promoted = promote_and_import(better)
    assert promoted["previous_version"] == weak["version"]
    assert champion(client) == strong["version"]
    old = version_tags(client, weak["version"])
    assert old["replaced_by"] == strong["version"] and old["replaced_at"]
    assert version_tags(client, strong["version"])["previous_champion"] == weak["version"]
    assert newest_bento(stack_env)[0] == bento_tag(strong["version"])

    # The imported champion serves probabilities from raw features.
    with bento_model_store(stack_env):
        pyfunc = bentoml.mlflow.load_model(bento_tag(strong["version"]))
    probabilities = np.asarray(pyfunc.predict(frame[list(FEATURE_NAMES)].head(3)))
    assert probabilities.shape == (3, 2) and np.allclose(probabilities.sum(axis=1), 1)

    # 4. Rollback with no version: the champion the current one replaced, re-imported as newest.
    back = rollback_champion(None, by="alice", reason="complaints from the retention team")
    assert back["version"] == weak["version"] and champion(client) == weak["version"]
    tags = version_tags(client, weak["version"])
    assert tags["rollback_by"] == "alice" and tags["rollback_reason"] == "complaints from the retention team"
    assert tags["rolled_back_from"] == strong["version"]
    assert version_tags(client, strong["version"])["replaced_by"] == weak["version"]
    assert newest_bento(stack_env)[0] == bento_tag(weak["version"])

    # The first champion replaced nobody: rolling back further is a clear failure.
    with pytest.raises(UnknownVersionError, match="replaced no earlier champion"):
        rollback_champion(None, by="alice", reason="again")

    # 5. Roll forward to a named version; an unknown one fails and lists those that exist.
    forward = rollback_champion(strong["version"], by="bob", reason="fixed upstream")
    assert forward["version"] == strong["version"] and champion(client) == strong["version"]
    assert newest_bento(stack_env)[0] == bento_tag(strong["version"])
    with pytest.raises(UnknownVersionError, match=r"no version '99'.*\['1', '2', '3'\]"):
        rollback_champion("99", by="bob", reason="typo")
    assert champion(client) == strong["version"]

    # A re-import of the current champion is a no-op (deterministic tag, already newest).
    assert rollback_champion(strong["version"], by="bob", reason="re-import")["bento_tag"] == bento_tag(
        strong["version"]
    )


def test_rollback_without_any_champion_fails_clearly(stack_env):
    configure_mlflow(stack_env)
    with pytest.raises(UnknownVersionError, match="no champion"):
        rollback_champion(None, by="carol", reason="nothing to roll back")


def test_a_gain_above_delta_that_could_be_noise_keeps_the_champion(stack_env):
    """A gradient-boosting champion and a spline logistic challenger on 300 validation rows: the
    challenger's AUC is higher by more than delta, but the paired bootstrap interval includes 0."""
    frame = month_000()
    configure_mlflow(stack_env)
    incumbent = register(train_model(frame, seed=5, classifier="hgb"))
    promote_and_import(evaluate_and_decide(incumbent, delta=0.005, impact=False))
    challenger = register(train_model(frame, seed=5))
    decision = evaluate_and_decide(challenger, delta=0.005, impact=False)
    assert decision["auc_gain"] >= 0.005
    low, high = decision["auc_gain_ci"]
    assert low < 0 < high
    assert not decision["promote"] and "could be noise" in decision["reason"]
    with pytest.raises(ValueError, match="not to promote"):
        promote_and_import(decision)


def test_alias_moves_are_compare_and_set_and_retries_change_nothing(stack_env):
    from streamflow_mlops.pipelines.champion import ChampionMovedError

    frame = month_000()
    client = configure_mlflow(stack_env)
    first = register(train_model(frame, seed=5, classifier="logreg", features=WEAK_FEATURES))
    promote_and_import(evaluate_and_decide(first, delta=0.005, impact=False), request="train-run-1")
    second = register(train_model(frame, seed=5))
    decision = evaluate_and_decide(second, delta=0.005, impact=False)
    assert decision["promote"] and decision["champion_version"] == first["version"]

    # A promotion retried after the alias moved: same answer, the previous champion stays recorded.
    promoted = promote_and_import(decision, request="train-run-2")
    again = promote_and_import(decision, request="train-run-2")
    assert again["version"] == promoted["version"] == second["version"]
    assert version_tags(client, second["version"])["previous_champion"] == first["version"]

    # A rollback retried (say its tag writes failed after the alias moved) steps back once, not twice.
    third = register(train_model(frame, seed=6))
    # What the train DAG would carry from a decision made while `second` was the champion.
    stale = {"promote": True, "version": third["version"], "champion_version": second["version"], "reason": "test"}
    back = rollback_champion(None, by="alice", reason="bad month", request="rollback-run-1")
    retried = rollback_champion(None, by="alice", reason="bad month", request="rollback-run-1")
    assert back["version"] == retried["version"] == first["version"] == champion(client)

    # The promotion decided against `second` must not replace `first`, which it never saw.
    with pytest.raises(ChampionMovedError, match="moved to"):
        promote_and_import(stale, request="train-run-3")
    assert champion(client) == first["version"]


def test_a_challenger_of_an_older_month_never_replaces_a_newer_champion(stack_env):
    frame = month_000()
    client = configure_mlflow(stack_env)
    weak = register(train_model(frame, seed=5, classifier="logreg", features=WEAK_FEATURES))
    promote_and_import(evaluate_and_decide(weak, delta=0.005, impact=False))
    # Say the champion had been trained on month_001: a month_000 challenger (a re-delivery) is kept out.
    client.set_model_version_tag(REGISTERED_MODEL, weak["version"], "month", "month_001")
    strong = register(train_model(frame, seed=5))
    kept = evaluate_and_decide(strong, delta=0.005, impact=False)
    assert not kept["promote"] and "older than the champion's training month month_001" in kept["reason"]
    assert evaluate_and_decide(strong, delta=0.005, impact=False, force=True)["promote"]
