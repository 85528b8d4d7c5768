"""What the scoring DAG calls: every user of a month scored by the champion, `churn_scores` replaced, the
ranked retention list exported (CSV under the state dir and an artifact of a `streamflow_scoring` run).

The features are the champion's FeatureService read point-in-time at the month's as_of from Feast's
offline store (the same features the service reads online). Scoring runs the champion's own sklearn
transform on the whole frame and its classifier on the encoded array, so the probabilities are its
`predict_proba`; the reasons come from the same encoded array (model/reasons.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streamflow_mlops.config.months import month_as_of, month_name, month_of_as_of, parse_month
from streamflow_mlops.config.schema import ENTITY
from streamflow_mlops.config.settings import FEATURE_SERVICE, WAREHOUSE_SCHEMA, Settings, get_settings
from streamflow_mlops.model.reasons import reasons_json, top_reason_indices

if TYPE_CHECKING:
    import pandas as pd
    import psycopg

    from streamflow_mlops.model.compiled import PipelineModel

log = logging.getLogger(__name__)

SCORING_EXPERIMENT = "streamflow_scoring"
# A retention team calls or mails a few hundred subscribers a month; 500 is about 7% of a
# 7,043-user month, inside its top decile, and a list a team can work through in a month.
DEFAULT_TOP_K = 500
DECILES = 10
FEATURES_ASSET = "streamflow_features"
SCORE_COLUMNS = ("month", ENTITY, "as_of", "churn_probability", "rank", "decile", "model_version", "reasons")
RETENTION_COLUMNS = ("rank", ENTITY, "churn_probability", "decile", "reasons")


class NoChampionError(LookupError):
    """Nothing to score with: no version carries the `champion` alias yet."""


def asset_name(key: Any, event: Any) -> str:
    """The name of the asset an event belongs to (Airflow keys events by Asset; events also carry it)."""
    return getattr(getattr(event, "asset", None), "name", None) or getattr(key, "name", None) or str(key)


def month_to_score(
    param_month: str | None,
    triggering_events: Mapping[Any, Iterable[Any]] | None,
    newest_month: Callable[[], str | None],
) -> str:
    """The month a scoring run works on.

    A newly published month (an event of the `streamflow_features` asset) is scored as such; a
    new champion (promotion or rollback) rescores the newest published month, not the month it
    was trained on (its event's `month`): a January model rolled back to in June must score June.
    A manual run scores its `month` param, and an empty param the newest published month.
    """
    published = [
        event.extra["month"]
        for asset, events in (triggering_events or {}).items()
        for event in events
        if asset_name(asset, event) == FEATURES_ASSET and getattr(event, "extra", None) and event.extra.get("month")
    ]
    if published:
        return month_name(max(parse_month(m) for m in published))
    if param_month and not triggering_events:
        return month_name(parse_month(param_month))
    newest = newest_month()
    if newest is None:
        raise LookupError("no month is loaded in the warehouse yet")
    return newest


def newest_loaded_month(db_url: str) -> str | None:
    """The newest month with users in the warehouse, or None before the first load."""
    import psycopg

    with psycopg.connect(db_url) as conn:
        (as_of,) = conn.execute(f"SELECT max(as_of) FROM {WAREHOUSE_SCHEMA}.users").fetchone()
    return None if as_of is None else month_name(month_of_as_of(as_of))


def rank_and_decile(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank 1 = the highest probability; equal probabilities keep the rows' order (the caller
    orders them by user_id, so a re-run ranks ties the same way). Decile 1 is the top tenth:
    `ceil(10 * rank / n)`, so every decile but the last holds the same number of users +-1."""
    n = len(probabilities)
    order = np.argsort(-np.asarray(probabilities, dtype=np.float64), kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    decile = -((-DECILES * rank) // max(n, 1))
    return rank, decile


def score_frame(model: PipelineModel, frame: pd.DataFrame) -> pd.DataFrame:
    """One row per user: user_id, churn_probability, rank, decile, reasons (JSON), in rank order."""
    import pandas as pd

    # Feast's frame comes sorted by user_id already (features/retrieval.py); checking is a tenth
    # of the cost of sorting a million ids again.
    if not frame[ENTITY].is_monotonic_increasing:
        frame = frame.sort_values(ENTITY, kind="stable", ignore_index=True)
    else:
        frame = frame.reset_index(drop=True)
    probabilities, contributions = model.explain_frame(frame)
    rank, decile = rank_and_decile(probabilities)
    if contributions is None:
        reasons = ["[]"] * len(frame)
    else:
        features = model.explainer.features
        values = {name: frame[name].to_numpy() for name in features}
        reasons = reasons_json(features, values, contributions, top_reason_indices(contributions))
    scores = pd.DataFrame(
        {
            ENTITY: frame[ENTITY].to_numpy(),
            "churn_probability": probabilities,
            "rank": rank,
            "decile": decile,
            "reasons": reasons,
        }
    )
    return scores.sort_values("rank", ignore_index=True)


# Rows per COPY chunk: Postgres parses one chunk while the next is formatted (the two cores
# overlap), and the text of a million rows (~250 MB) never sits in memory at once.
COPY_CHUNK_ROWS = 50_000


def copy_chunks(
    scores: pd.DataFrame, month: str, as_of: date, model_version: str, chunk_rows: int = COPY_CHUNK_ROWS
) -> Iterator[str]:
    """The rows of `churn_scores` (SCORE_COLUMNS) as COPY text, tab-separated, a chunk at a time.

    Probabilities as repr (the shortest text that reads back as the same float); pandas' CSV
    writer, quoting every JSON quote, was slower and a fifth more text.
    """
    day = as_of.isoformat()
    user_ids = scores[ENTITY].tolist()
    probabilities = scores["churn_probability"].tolist()
    ranks = scores["rank"].tolist()
    deciles = scores["decile"].tolist()
    reasons = scores["reasons"].tolist()
    for start in range(0, len(scores), chunk_rows):
        stop = start + chunk_rows
        text = "".join(
            f"{month}\t{user_id}\t{day}\t{probability!r}\t{rank}\t{decile}\t{model_version}\t{why}\n"
            for user_id, probability, rank, decile, why in zip(
                user_ids[start:stop],
                probabilities[start:stop],
                ranks[start:stop],
                deciles[start:stop],
                reasons[start:stop],
                strict=True,
            )
        )
        # In COPY's text format a backslash starts an escape (JSON's \uXXXX, \"): doubled, it is itself.
        yield text.replace("\\", "\\\\")


def write_scores(conn: psycopg.Connection, month: str, as_of: date, scores: pd.DataFrame, model_version: str) -> int:
    """Replace the month's partition of `churn_scores` with `scores`, in one transaction.

    The month is COPYed into a new standalone table, its primary key built in one sort, and the
    table swapped in for the month's old partition: readers see the old month or the new one,
    never a mix, and a failure anywhere leaves the old partition as it was.
    """
    from psycopg import sql

    parent = sql.Identifier(WAREHOUSE_SCHEMA, "churn_scores")
    name = f"churn_scores_{month}"
    partition, loading = sql.Identifier(WAREHOUSE_SCHEMA, name), sql.Identifier(WAREHOUSE_SCHEMA, f"{name}_load")
    bound = sql.Literal(month)
    statement = sql.SQL("COPY {loading} ({columns}) FROM STDIN").format(
        loading=loading, columns=sql.SQL(", ").join(map(sql.Identifier, SCORE_COLUMNS))
    )
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SET LOCAL maintenance_work_mem = '256MB'")
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {loading}").format(loading=loading))
        # The CHECK matches the partition bound, so ATTACH trusts it instead of scanning the rows.
        cur.execute(
            sql.SQL(
                "CREATE TABLE {loading} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS, "
                "CONSTRAINT partition_bound CHECK (month = {bound}))"
            ).format(loading=loading, parent=parent, bound=bound)
        )
        with cur.copy(statement) as copy:
            for chunk in copy_chunks(scores, month, as_of, model_version):
                copy.write(chunk)
        written = cur.rowcount
        cur.execute(
            sql.SQL("ALTER TABLE {loading} ADD CONSTRAINT {pkey} PRIMARY KEY (month, {entity})").format(
                loading=loading, pkey=sql.Identifier(f"{name}_load_pkey"), entity=sql.Identifier(ENTITY)
            )
        )
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {partition}").format(partition=partition))
        cur.execute(
            sql.SQL("ALTER TABLE {loading} RENAME TO {name}").format(loading=loading, name=sql.Identifier(name))
        )
        cur.execute(
            sql.SQL("ALTER INDEX {old} RENAME TO {new}").format(
                old=sql.Identifier(WAREHOUSE_SCHEMA, f"{name}_load_pkey"), new=sql.Identifier(f"{name}_pkey")
            )
        )
        cur.execute(
            sql.SQL("ALTER TABLE {parent} ATTACH PARTITION {partition} FOR VALUES IN ({bound})").format(
                parent=parent, partition=partition, bound=bound
            )
        )
        cur.execute(sql.SQL("ALTER TABLE {partition} DROP CONSTRAINT partition_bound").format(partition=partition))
    return written


def retention_list(scores: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """The `top_k` riskiest users, rank first (scores are in rank order)."""
    return scores.head(top_k)[list(RETENTION_COLUMNS)]


def export_retention_list(scores: pd.DataFrame, top_k: int, directory: Path, month: str) -> Path:
    """`<directory>/<month>_top<k>.csv`: rank, user_id, churn_probability, decile, reasons (JSON)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{month}_top{top_k}.csv"
    retention_list(scores, top_k).to_csv(path, index=False)
    return path


def load_champion_model(settings: Settings) -> tuple[Any, PipelineModel]:
    """The champion's registry version and its pipeline, ready for batch scoring."""
    import mlflow.sklearn

    from streamflow_mlops.model.compiled import PipelineModel
    from streamflow_mlops.model.registry import champion_version, model_uri
    from streamflow_mlops.model.tracking import configure_mlflow

    version = champion_version(configure_mlflow(settings))
    if version is None:
        raise NoChampionError("no champion to score with yet (the alias `champion` is not set)")
    pipeline = mlflow.sklearn.load_model(model_uri(version.version))
    return version, PipelineModel(pipeline, list(pipeline.feature_names_in_))


def log_scoring_run(settings: Settings, summary: dict[str, Any], retention_csv: Path) -> str:
    """One run of `streamflow_scoring` per scored month: what was scored with what, the list as an artifact."""
    from streamflow_mlops.model.tracking import configure_mlflow, ensure_experiment

    client = configure_mlflow(settings)
    run = client.create_run(
        ensure_experiment(client, settings, SCORING_EXPERIMENT),
        run_name=f"score {summary['month']} v{summary['model_version']}",
        tags={"month": summary["month"], "model_version": summary["model_version"]},
    )
    run_id = run.info.run_id
    for key in ("month", "as_of", "model_version", "feature_service", "top_k", "threshold"):
        client.log_param(run_id, key, summary[key])
    for key in ("scored_users", "predicted_churn_rate", "mean_probability", "top_k_min_probability"):
        client.log_metric(run_id, key, summary[key])
    for stage, seconds in summary["seconds"].items():
        client.log_metric(run_id, f"seconds_{stage}", seconds)
    client.log_artifact(run_id, str(retention_csv), artifact_path="retention_list")
    client.set_terminated(run_id)
    return run_id


def score_month(month: str, top_k: int = DEFAULT_TOP_K, settings: Settings | None = None) -> dict[str, Any]:
    """Score every user of `month` with the champion, replace the month in `churn_scores`, export
    the top `top_k`; returns a JSON-able summary (counts, rates, paths, MLflow run, seconds by stage)."""
    import psycopg

    from streamflow_mlops.features.retrieval import feature_frame

    settings = settings or get_settings()
    month = month_name(parse_month(month))
    as_of = month_as_of(parse_month(month))
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    version, model = load_champion_model(settings)
    feature_service = version.tags.get("feature_service") or FEATURE_SERVICE
    threshold = float(version.tags.get("threshold", 0.5))
    seconds["model"] = time.perf_counter() - started
    mark = time.perf_counter()
    frame = feature_frame(month, feature_service, settings)
    if frame.empty:
        raise LookupError(f"{month}: no users at {as_of} in the feature store")
    seconds["features"] = time.perf_counter() - mark
    mark = time.perf_counter()
    scores = score_frame(model, frame)
    seconds["score"] = time.perf_counter() - mark
    mark = time.perf_counter()
    with psycopg.connect(settings.db_url) as conn:
        written = write_scores(conn, month, as_of, scores, str(version.version))
    seconds["write"] = time.perf_counter() - mark
    retention_csv = export_retention_list(scores, top_k, settings.state_dir / "scores", month)
    probabilities = scores["churn_probability"].to_numpy()
    summary: dict[str, Any] = {
        "month": month,
        "as_of": as_of.isoformat(),
        "model_version": str(version.version),
        "model_month": version.tags.get("month", ""),
        "feature_service": feature_service,
        "top_k": int(top_k),
        "threshold": threshold,
        "scored_users": int(written),
        "predicted_churn_rate": float((probabilities >= threshold).mean()),
        "mean_probability": float(probabilities.mean()),
        "top_k_min_probability": float(probabilities[: min(top_k, len(probabilities))].min()),
        "retention_list": str(retention_csv),
        "seconds": seconds,
    }
    summary["mlflow_run_id"] = log_scoring_run(settings, summary, retention_csv)
    seconds["total"] = time.perf_counter() - started
    log.info(
        "%s scored with v%s: %d users, predicted churn rate %.3f, top %d in %s (%.1f s)",
        month,
        summary["model_version"],
        written,
        summary["predicted_churn_rate"],
        top_k,
        retention_csv,
        seconds["total"],
    )
    return summary


def labelled_scores(db_url: str, month: str) -> pd.DataFrame:
    """The month's scores joined with the labels stored at the month's as_of (the outcome of the
    period the scores predict); empty while those labels have not arrived."""
    import pandas as pd
    import psycopg

    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            f"SELECT s.user_id, l.churn_label, s.churn_probability FROM {WAREHOUSE_SCHEMA}.churn_scores s "
            f"JOIN {WAREHOUSE_SCHEMA}.labels l ON l.user_id = s.user_id AND l.as_of = s.as_of WHERE s.month = %s",
            (month,),
        ).fetchall()
    return pd.DataFrame(rows, columns=[ENTITY, "churn_label", "churn_probability"])


def add_scores_to_dashboard(summary: dict[str, Any], settings: Settings | None = None) -> str:
    """The month's scores on the Evidently dashboard, and its realized performance when the labels
    of the scored period exist and the champion did not train on them (its own training month
    would be in-sample, not realized); returns what was added."""
    from streamflow_mlops.monitoring.dashboard import add_classification_snapshot, add_scores_snapshot

    settings = settings or get_settings()
    month, as_of = summary["month"], date.fromisoformat(summary["as_of"])
    add_scores_snapshot(month, as_of, summary["scored_users"], summary["predicted_churn_rate"], settings)
    if summary.get("model_month") == month:
        return f"{month}: scores (no realized performance: the champion trained on {month})"
    scored = labelled_scores(settings.db_url, month)
    if len(scored) == 0 or scored["churn_label"].nunique() < 2:
        return f"{month}: scores (labels not there yet)"
    add_classification_snapshot(month, as_of, scored, float(summary["threshold"]), settings)
    return f"{month}: scores and realized performance on {len(scored)} labelled users"
