"""What the scoring DAG calls: every user of a month scored by the champion, `churn_scores` replaced, the
ranked retention list exported (CSV under the state dir and an artifact of a `streamflow_scoring` run).

The features are the champion's FeatureService read point-in-time at the month's as_of from Feast's
offline store (the same features the service reads online), a chunk of `STREAMFLOW_CHUNK_ROWS` users
at a time. Each chunk runs the champion's own sklearn transform and its classifier on the encoded
array, so the probabilities are its `predict_proba`; the reasons come from the same encoded array
(model/reasons.py). Chunks are COPYed into a stage as they are scored and Postgres ranks the month,
so the task never holds more than a chunk, whatever the month's size.

Retention economics: each user's `expected_loss` (probability x monthly fee x
`STREAMFLOW_VALUE_HORIZON_MONTHS`) is ranked beside the probability (`rank`, `loss_rank`); the top
`top_k` by `rank_by` are the month's targeted users, split into a `treatment` and a `control` arm
(monitoring/campaigns.py) in the same statement. The contact list holds the treatment arm only;
the control arm is exported apart, and both are the month's `retention_campaigns` rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY
from streamflow_mlops.config.settings import WAREHOUSE_SCHEMA, Settings, get_settings
from streamflow_mlops.monitoring.campaigns import (
    CONTROL,
    DEFAULT_CONTROL_SHARE,
    DEFAULT_RANK_BY,
    DEFAULT_TOP_K,
    RANK_COLUMN,
    TREATMENT,
    control_sql,
    control_threshold,
)
from streamflow_mlops.pipelines.score_rows import (
    DECILES,
    FEE,
    RETENTION_COLUMNS,
    check_rank_by,
    score_chunk,
    summary_figures,
)

if TYPE_CHECKING:
    import pandas as pd
    import psycopg

    from streamflow_mlops.model.compiled import PipelineModel
    from streamflow_mlops.model.registry import RegisteredVersion

log = logging.getLogger(__name__)

SCORING_EXPERIMENT = "streamflow_scoring"
SCORING_PARAMS = (
    "month", "as_of", "model_version", "feature_service", "top_k", "threshold", "rank_by", "control_share",
    "horizon_months",
)  # fmt: skip
SCORING_METRICS = (
    "scored_users", "predicted_churn_rate", "mean_probability", "top_k_min_probability", "treatment_users",
    "control_users", "expected_loss_total", "top_k_expected_loss_by_probability",
    "top_k_expected_loss_by_expected_loss",
)  # fmt: skip


class NoChampionError(LookupError):
    """Nothing to score with: no version carries the `champion` alias yet."""


def newest_loaded_month(db_url: str, settings: Settings | None = None) -> Month | None:
    """The newest month with users in the warehouse (the lake on the spark engine), or None before the first load."""
    import psycopg

    settings = settings or get_settings()
    if settings.engine == "spark":
        from streamflow_mlops.pipelines.score_spark import newest_lake_month

        return newest_lake_month(settings)
    with psycopg.connect(db_url) as conn:
        (as_of,) = conn.execute(f"SELECT max(as_of) FROM {WAREHOUSE_SCHEMA}.users").fetchone()
    return None if as_of is None else Month.of_as_of(as_of)


def copy_text(scores: pd.DataFrame) -> str:
    """A chunk's scores as COPY text for the stage: user_id, churn_probability, monthly_fee, reasons,
    tab-separated.

    Probabilities as repr (the shortest text that reads back as the same float); pandas' CSV
    writer, quoting every JSON quote, was slower and a fifth more text.
    """
    text = "".join(
        f"{user_id}\t{probability!r}\t{fee!r}\t{why}\n"
        for user_id, probability, fee, why in zip(
            scores[ENTITY].tolist(),
            scores["churn_probability"].tolist(),
            scores[FEE].tolist(),
            scores["reasons"].tolist(),
            strict=True,
        )
    )
    # In COPY's text format a backslash starts an escape (JSON's \uXXXX, \"): doubled, it is itself.
    return text.replace("\\", "\\\\")


def rank_sql(users: int, rank_by: str = DEFAULT_RANK_BY) -> str:
    """The INSERT that ranks the staged month into its loading table (named parameters: month,
    as_of, model_version, horizon_months, top_k, control_threshold). Rank 1 = the highest
    probability, `loss_rank` 1 = the highest expected loss, ties by user_id (bytewise); decile 1 is
    the top tenth by probability, `ceil(10 * rank / n)`, so every decile but the last holds the same
    number of users +-1. The top `top_k` by `rank_by` get an arm (monitoring/campaigns.py), everyone
    else none. Postgres sorts the month (on disk when it must) instead of the task holding it."""
    check_rank_by(rank_by)
    n = max(int(users), 1)
    arm = (
        f"CASE WHEN {RANK_COLUMN[rank_by]} <= %(top_k)s THEN "
        f"CASE WHEN {control_sql()} THEN '{CONTROL}' ELSE '{TREATMENT}' END END"
    )
    return (
        "INSERT INTO {loading} (month, user_id, as_of, churn_probability, rank, decile, model_version, reasons, "
        f"{FEE}, expected_loss, loss_rank, arm) "
        f"SELECT %(month)s, user_id, %(as_of)s, churn_probability, rank, ({DECILES} * rank + {n} - 1) / {n}, "
        f"%(model_version)s, reasons::jsonb, {FEE}, expected_loss, loss_rank, {arm} "
        "FROM (SELECT *, row_number() OVER (ORDER BY churn_probability DESC, user_id) AS rank, "
        "row_number() OVER (ORDER BY expected_loss DESC, user_id) AS loss_rank "
        f"FROM (SELECT *, churn_probability * {FEE} * %(horizon_months)s AS expected_loss FROM {{stage}}) valued"
        ") ranked"
    )


def write_scores(
    conn: psycopg.Connection,
    month: Month,
    chunks: Iterable[pd.DataFrame],
    model_version: str,
    *,
    top_k: int = DEFAULT_TOP_K,
    rank_by: str = DEFAULT_RANK_BY,
    control_share: float = DEFAULT_CONTROL_SHARE,
    horizon_months: float | None = None,
) -> int:
    """Replace the month's partition of `churn_scores` with the scored chunks, in one transaction
    of the caller's connection; returns the rows written. The top `top_k` by `rank_by` get their
    arm, `control_share` of them (in expectation) `control`; `horizon_months` defaults to the
    `STREAMFLOW_VALUE_HORIZON_MONTHS` setting.

    Each chunk is COPYed into a temporary stage as it comes; Postgres ranks the month into a new
    standalone table, builds its primary key in one sort and swaps it in for the month's old
    partition (data/warehouse.py): readers see the old month or the new one, never a mix, and a
    failure anywhere leaves the old partition as it was.
    """
    from psycopg import sql

    from streamflow_mlops.data.warehouse import Partition, add_primary_key, create_loading_table, swap_in

    check_rank_by(rank_by)
    parameters = {
        "month": month.name,
        "as_of": month.as_of,
        "model_version": model_version,
        "horizon_months": float(horizon_months if horizon_months is not None else get_settings().value_horizon_months),
        "top_k": int(top_k),
        "control_threshold": control_threshold(control_share),
    }
    part = Partition("churn_scores", f"churn_scores_{month.name}", sql.Literal(month.name), key="month")
    stage = sql.Identifier("churn_scores_stage")
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SET LOCAL maintenance_work_mem = '256MB'")
        cur.execute("SET LOCAL work_mem = '256MB'")
        cur.execute(
            sql.SQL(
                'CREATE TEMP TABLE {stage} (user_id TEXT COLLATE "C" NOT NULL, '
                f"churn_probability DOUBLE PRECISION NOT NULL, {FEE} DOUBLE PRECISION NOT NULL, "
                "reasons TEXT NOT NULL) ON COMMIT DROP"
            ).format(stage=stage)
        )
        users = 0
        with cur.copy(sql.SQL("COPY {stage} FROM STDIN").format(stage=stage)) as copy:
            for scores in chunks:
                copy.write(copy_text(scores))
                users += len(scores)
        if users == 0:
            raise LookupError(f"{month}: no users at {month.as_of} in the feature store")
        create_loading_table(conn, part)
        cur.execute(sql.SQL(rank_sql(users, rank_by)).format(loading=part.ident(part.loading), stage=stage), parameters)
        written = cur.rowcount
        add_primary_key(conn, part, ("month", ENTITY))
        swap_in(conn, part)
    return written


def month_summary(conn: psycopg.Connection, month: Month, threshold: float, top_k: int) -> dict[str, float]:
    """What the month's scores say, computed where they are: rates, the targeted users by arm, and
    the expected loss the top `top_k` covers under each ranking (by probability and by expected loss, every month)."""
    row = conn.execute(
        f"SELECT count(*), avg((churn_probability >= %(threshold)s)::int), avg(churn_probability), "
        "min(churn_probability) FILTER (WHERE arm IS NOT NULL), "
        f"count(*) FILTER (WHERE arm = '{TREATMENT}'), count(*) FILTER (WHERE arm = '{CONTROL}'), "
        "coalesce(sum(expected_loss), 0), coalesce(sum(expected_loss) FILTER (WHERE rank <= %(top_k)s), 0), "
        "coalesce(sum(expected_loss) FILTER (WHERE loss_rank <= %(top_k)s), 0) "
        f"FROM {WAREHOUSE_SCHEMA}.churn_scores WHERE month = %(month)s",
        {"threshold": threshold, "top_k": top_k, "month": month.name},
    ).fetchone()
    return summary_figures(row)


def retention_list(conn: psycopg.Connection, month: Month, rank_by: str, arm: str) -> pd.DataFrame:
    """One arm of the month's targeted users in `rank_by` order (RETENTION_COLUMNS, `rank` = the
    position by `rank_by`), read where they are: the targeted users are the only ones with an arm."""
    import pandas as pd

    order = RANK_COLUMN[check_rank_by(rank_by)]
    rows = conn.execute(
        f"SELECT {order}, user_id, churn_probability, {FEE}, expected_loss, decile, reasons::text "
        f"FROM {WAREHOUSE_SCHEMA}.churn_scores WHERE month = %s AND arm = %s ORDER BY {order}",
        (month.name, arm),
    ).fetchall()
    return pd.DataFrame(rows, columns=list(RETENTION_COLUMNS))


def list_paths(directory: Path, month: str, top_k: int) -> dict[str, Path]:
    """The month's two lists: `<month>_top<k>.csv` (to contact) and `<month>_top<k>_control.csv` (held back)."""
    return {TREATMENT: directory / f"{month}_top{top_k}.csv", CONTROL: directory / f"{month}_top{top_k}_control.csv"}


def export_retention_list(
    lists: Mapping[str, pd.DataFrame], top_k: int, directory: Path, month: str
) -> dict[str, Path]:
    """Both lists as CSV (RETENTION_COLUMNS): the contact list, which never holds a control user, and
    the held-back list (to keep out of every other campaign this month); returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = list_paths(directory, month, top_k)
    for arm, path in paths.items():
        lists[arm].to_csv(path, index=False)
    return paths


def champion_to_score(settings: Settings) -> RegisteredVersion:
    """The champion's registry version (its pipeline not loaded yet); NoChampionError before the first promotion."""
    from streamflow_mlops.model.registry import load_champion
    from streamflow_mlops.model.tracking import configure_mlflow

    champion = load_champion(configure_mlflow(settings))
    if champion is None:
        raise NoChampionError("no champion to score with yet (the alias `champion` is not set)")
    return champion


def batch_model(champion: RegisteredVersion) -> PipelineModel:
    """The champion's pipeline, ready for batch scoring."""
    from streamflow_mlops.model.compiled import PipelineModel

    pipeline = champion.pipeline()
    return PipelineModel(pipeline, list(pipeline.feature_names_in_))


def log_scoring_run(settings: Settings, summary: dict[str, Any], lists: Iterable[Path]) -> str:
    """One run of `streamflow_scoring` per scored month: what was scored with what, the lists as artifacts."""
    from streamflow_mlops.model.tracking import configure_mlflow, ensure_experiment

    client = configure_mlflow(settings)
    run = client.create_run(
        ensure_experiment(client, settings, SCORING_EXPERIMENT),
        run_name=f"score {summary['month']} v{summary['model_version']}",
        tags={"month": summary["month"], "model_version": summary["model_version"]},
    )
    run_id = run.info.run_id
    for key in SCORING_PARAMS:
        client.log_param(run_id, key, summary[key])
    for key in SCORING_METRICS:
        client.log_metric(run_id, key, summary[key])
    for stage, seconds in summary["seconds"].items():
        client.log_metric(run_id, f"seconds_{stage}", seconds)
    for path in lists:
        client.log_artifact(run_id, str(path), artifact_path="retention_list")
    client.set_terminated(run_id)
    return run_id


def check_scoring_options(rank_by: str, control_share: float) -> None:
    """Refuse a bad `rank_by` or `control_share` before anything is read."""
    check_rank_by(rank_by)
    control_threshold(control_share)


def replace_month_scores(
    conn: psycopg.Connection,
    month: Month,
    model: PipelineModel,
    champion: RegisteredVersion,
    settings: Settings,
    *,
    top_k: int,
    rank_by: str,
    control_share: float,
) -> int:
    """Score the month chunk by chunk into `churn_scores` and record its campaign; returns the rows written."""
    from streamflow_mlops.data.warehouse import create_schema
    from streamflow_mlops.features.retrieval import iter_feature_frames
    from streamflow_mlops.pipelines.campaigns import record_campaign

    frames = iter_feature_frames(month, champion.feature_service, settings)
    chunks = (score_chunk(model, frame) for frame in frames)
    create_schema(conn)  # the columns and tables newer than the month's first load
    # Scores and the campaign move together: a failure leaves the month's old scores and list.
    with conn.transaction():
        written = write_scores(
            conn, month, chunks, champion.version,
            top_k=top_k, rank_by=rank_by, control_share=control_share, horizon_months=settings.value_horizon_months,
        )  # fmt: skip
        record_campaign(conn, month, rank_by, control_share)
    return written


def scoring_summary(
    month: Month,
    champion: RegisteredVersion,
    options: Mapping[str, Any],
    figures: Mapping[str, float],
    paths: Mapping[str, Path],
    seconds: dict[str, float],
) -> dict[str, Any]:
    """The JSON-able summary of a scored month (`options`: top_k, rank_by, control_share, horizon_months)."""
    return {
        "month": month.name,
        "as_of": month.as_of.isoformat(),
        "model_version": champion.version,
        "model_month": champion.month_name,
        "feature_service": champion.feature_service,
        "top_k": int(options["top_k"]),
        "threshold": champion.threshold,
        "rank_by": options["rank_by"],
        "control_share": float(options["control_share"]),
        "horizon_months": options["horizon_months"],
        **figures,
        "retention_list": str(paths[TREATMENT]),
        "control_list": str(paths[CONTROL]),
        "seconds": seconds,
    }


def score_month(
    month: str | Month,
    top_k: int = DEFAULT_TOP_K,
    settings: Settings | None = None,
    rank_by: str = DEFAULT_RANK_BY,
    control_share: float = DEFAULT_CONTROL_SHARE,
) -> dict[str, Any]:
    """Score every user of `month` with the champion, replace the month in `churn_scores` and its
    `retention_campaigns` rows (one transaction), export the top `top_k` by `rank_by` as the contact
    list and the held-back control list; returns a JSON-able summary (counts, rates, paths, MLflow
    run, seconds by stage)."""
    import psycopg

    settings = settings or get_settings()
    check_scoring_options(rank_by, control_share)
    month = Month.parse(month)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    champion = champion_to_score(settings)
    model = batch_model(champion)
    seconds["model"] = time.perf_counter() - started
    mark = time.perf_counter()
    options = {
        "top_k": top_k, "rank_by": rank_by, "control_share": control_share,
        "horizon_months": settings.value_horizon_months,
    }  # fmt: skip
    if settings.engine == "spark":
        from streamflow_mlops.pipelines.score_spark import score_on_spark

        written, figures, lists = score_on_spark(month, model, champion, settings, options)
        seconds["score_and_write"] = time.perf_counter() - mark
    else:
        with psycopg.connect(settings.db_url) as conn:
            written = replace_month_scores(
                conn, month, model, champion, settings, top_k=top_k, rank_by=rank_by, control_share=control_share
            )
            seconds["score_and_write"] = time.perf_counter() - mark
            figures = month_summary(conn, month, champion.threshold, top_k)
            lists = {arm: retention_list(conn, month, rank_by, arm) for arm in (TREATMENT, CONTROL)}
    paths = export_retention_list(lists, top_k, settings.state_dir / "scores", month.name)
    summary = scoring_summary(month, champion, options, figures, paths, seconds)
    summary["mlflow_run_id"] = log_scoring_run(settings, summary, paths.values())
    seconds["total"] = time.perf_counter() - started
    log.info(
        "%s scored with v%s: %d users, predicted churn rate %.3f; top %d by %s: %d to contact in %s, %d held back "
        "(%.1f s)",
        month, summary["model_version"], written, summary["predicted_churn_rate"], top_k, rank_by,
        summary["treatment_users"], paths[TREATMENT], summary["control_users"], seconds["total"],
    )  # fmt: skip
    return summary


def labelled_scores(db_url: str, month: Month, scored_users: int, sample_rows: int) -> pd.DataFrame:
    """The month's scores joined with the labels stored at the month's as_of (the outcome of the
    period the scores predict), for about `sample_rows` users of the md5 sample
    (features/retrieval.py) when the month has more; empty while those labels have not arrived.
    The treatment arm of the campaign those labels answer is left out (pipelines/campaigns.py)."""
    import pandas as pd
    import psycopg

    from streamflow_mlops.features.retrieval import sample_condition
    from streamflow_mlops.pipelines.campaigns import campaign_for_labels

    sample = sample_condition(scored_users, sample_rows, column="s.user_id")
    campaign = campaign_for_labels(db_url, month.as_of)
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            f"SELECT s.user_id, l.churn_label, s.churn_probability FROM {WAREHOUSE_SCHEMA}.churn_scores s "
            f"JOIN {WAREHOUSE_SCHEMA}.labels l ON l.user_id = s.user_id AND l.as_of = s.as_of WHERE s.month = %s "
            f"AND NOT EXISTS (SELECT 1 FROM {WAREHOUSE_SCHEMA}.retention_campaigns c WHERE c.month = %s "
            f"AND c.arm = '{TREATMENT}' AND c.user_id = s.user_id)" + (f" AND {sample}" if sample else ""),
            (month.name, campaign.name if campaign else None),
        ).fetchall()
    return pd.DataFrame(rows, columns=[ENTITY, "churn_label", "churn_probability"])


def add_scores_to_dashboard(summary: dict[str, Any], settings: Settings | None = None) -> str:
    """The month's scores on the Evidently dashboard, and its realized performance when the labels
    of the scored period exist and the champion did not train on them (its own training month
    would be in-sample, not realized); returns what was added."""
    from streamflow_mlops.monitoring.dashboard import add_classification_snapshot, add_scores_snapshot

    settings = settings or get_settings()
    month = Month.parse(summary["month"])
    add_scores_snapshot(month, summary["scored_users"], summary["predicted_churn_rate"], settings)
    if summary.get("model_month") == month.name:
        return f"{month}: scores (no realized performance: the champion trained on {month})"
    if settings.engine == "spark":
        from streamflow_mlops.pipelines.score_spark import labelled_scores_on_spark

        scored = labelled_scores_on_spark(settings, month, summary["scored_users"], settings.drift_sample_rows)
    else:
        scored = labelled_scores(settings.db_url, month, summary["scored_users"], settings.drift_sample_rows)
    if len(scored) == 0 or scored["churn_label"].nunique() < 2:
        return f"{month}: scores (labels not there yet)"
    add_classification_snapshot(month, scored, float(summary["threshold"]), settings)
    return f"{month}: scores and realized performance on {len(scored)} labelled users"
