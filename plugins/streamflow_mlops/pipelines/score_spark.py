"""The scoring DAG's month on the spark engine: every user scored on the executors, `churn_scores` in the lake.

The same steps as pipelines/score.py, where the data is:

1. the month's users with their point-in-time features come from Feast's Spark offline store as a
   DataFrame (features/retrieval.py `feature_frame_on_spark`), never collected;
2. each executor scores its rows with the champion's pipeline through `score_chunk` in
   `mapInPandas` (the same compiled scorer and reason codes as the postgres engine and the
   service; `mlflow.pyfunc.spark_udf` would give probabilities without reasons) and the scores
   are written aside once, as Parquet;
3. Spark ranks them (probability and expected loss, ties by user_id in binary order, the
   warehouse's COLLATE "C"), assigns deciles and arms with the same rules (the arm's hash in
   Spark SQL, monitoring/campaigns.py), and the month's `churn_scores` folder is swapped in
   (`<lake>/churn_scores/month=<month>/`, data/lake.py);
4. the targeted users (top_k rows) go to Postgres's `retention_campaigns`, with the control tables,
   and the summary and the two lists are read from the lake.

A failure before the swap leaves the month's old scores; the campaign rows follow in their own
transaction right after it (a re-run of the task makes both agree again, as it replaces both).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY
from streamflow_mlops.config.settings import Settings
from streamflow_mlops.data import lake
from streamflow_mlops.monitoring.campaigns import (
    CONTROL,
    RANK_COLUMN,
    TREATMENT,
    control_spark_sql,
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
    from pyspark.sql import DataFrame, SparkSession

    from streamflow_mlops.model.compiled import PipelineModel
    from streamflow_mlops.model.registry import RegisteredVersion

log = logging.getLogger(__name__)

SCORES_TABLE = "churn_scores"
MONTH_KEY = "month"
SCORED_SCHEMA = f"{ENTITY} string, churn_probability double, {FEE} double, reasons string"


def scorer(model: PipelineModel):
    """The function each executor runs over its rows (Arrow batches as pandas frames)."""

    def score(frames):
        for frame in frames:
            yield score_chunk(model, frame)

    return score


def ranked(scored: DataFrame, users: int, month: Month, model_version: str, options: dict[str, Any]) -> DataFrame:
    """The month's `churn_scores` rows from its scores: the same columns and rules as score.py's `rank_sql`."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    n = max(int(users), 1)
    probability, loss = F.col("churn_probability"), F.col("expected_loss")
    valued = scored.withColumn("expected_loss", probability * F.col(FEE) * F.lit(float(options["horizon_months"])))
    by_probability = Window.orderBy(probability.desc(), F.col(ENTITY).asc())
    by_loss = Window.orderBy(loss.desc(), F.col(ENTITY).asc())
    ranks = valued.withColumn("rank", F.row_number().over(by_probability)).withColumn(
        "loss_rank", F.row_number().over(by_loss)
    )
    control = F.expr(control_spark_sql(month.name, control_threshold(options["control_share"])))
    targeted = F.col(RANK_COLUMN[options["rank_by"]]) <= F.lit(int(options["top_k"]))
    arm = F.when(targeted, F.when(control, F.lit(CONTROL)).otherwise(F.lit(TREATMENT)))
    return ranks.select(
        F.col(ENTITY),
        F.lit(month.as_of).alias("as_of"),
        probability,
        F.col("rank").cast("int").alias("rank"),
        # bigint: 10 x rank overflows an int past 214M users.
        F.expr(f"({DECILES} * CAST(rank AS BIGINT) + {n} - 1) div {n}").cast("smallint").alias("decile"),
        F.lit(str(model_version)).alias("model_version"),
        F.col("reasons"),
        F.current_timestamp().alias("scored_at"),
        F.col(FEE),
        loss,
        F.col("loss_rank").cast("int").alias("loss_rank"),
        arm.alias("arm"),
    )


def month_scores(spark: SparkSession, settings: Settings, month: Month) -> DataFrame:
    """The month's rows of the lake's `churn_scores` (with its `month` column, as in the warehouse)."""
    from pyspark.sql import functions as F

    url = lake.partition_url(settings.lake_url, SCORES_TABLE, month.name, MONTH_KEY)
    return spark.read.parquet(url).withColumn(MONTH_KEY, F.lit(month.name))


def write_month_scores(
    spark: SparkSession,
    settings: Settings,
    month: Month,
    model: PipelineModel,
    champion: RegisteredVersion,
    options: dict[str, Any],
) -> int:
    """Score the month on the executors and swap its `churn_scores` folder in; returns the rows written."""
    from streamflow_mlops.features.retrieval import feature_frame_on_spark

    features = feature_frame_on_spark(month, champion.feature_service, settings)
    scored_url = lake.staging_url(settings.lake_url, SCORES_TABLE, f"scored-{month.name}", MONTH_KEY)
    final_url = lake.staging_url(settings.lake_url, SCORES_TABLE, month.name, MONTH_KEY)
    try:
        # Scored once, written aside: ranking reads the scores, not the model again.
        features.mapInPandas(scorer(model), SCORED_SCHEMA).write.parquet(scored_url)
        scored = spark.read.parquet(scored_url)
        users = scored.count()
        if users == 0:
            raise LookupError(f"{month}: no users at {month.as_of} in the feature store")
        ranked(scored, users, month, champion.version, options).write.parquet(final_url)
        lake.swap_in(spark, final_url, lake.partition_url(settings.lake_url, SCORES_TABLE, month.name, MONTH_KEY))
    except BaseException:
        lake.remove_staged(spark, final_url)
        raise
    finally:
        lake.remove_staged(spark, scored_url)
    return users


def record_campaign_rows(conn, month: Month, targeted: pd.DataFrame, rank_by: str, control_share: float) -> int:
    """Replace the month's `retention_campaigns` rows with its targeted users (collected from the lake)."""
    from streamflow_mlops.config.settings import WAREHOUSE_SCHEMA

    conn.execute(f"DELETE FROM {WAREHOUSE_SCHEMA}.retention_campaigns WHERE month = %s", (month.name,))
    rank_column = RANK_COLUMN[rank_by]
    rows = [
        (
            month.name,
            r[ENTITY],
            r["as_of"],
            r["arm"],
            r["arm"] == TREATMENT,
            int(r[rank_column]),
            rank_by,
            float(r["churn_probability"]),
            float(r[FEE]),
            float(r["expected_loss"]),
            control_share,
            r["model_version"],
        )  # fmt: skip
        for r in targeted.to_dict("records")
    ]
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {WAREHOUSE_SCHEMA}.retention_campaigns (month, user_id, as_of, arm, contacted, rank, "
            "rank_by, churn_probability, monthly_fee, expected_loss, control_share, model_version) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )
    return len(rows)


def month_summary(scores: DataFrame, threshold: float, top_k: int) -> dict[str, float]:
    """score.py's `month_summary`, computed by Spark over the month's lake rows."""
    from pyspark.sql import functions as F

    p, loss = F.col("churn_probability"), F.col("expected_loss")
    row = scores.agg(
        F.count(F.lit(1)),
        F.avg((p >= F.lit(threshold)).cast("int")),
        F.avg(p),
        F.min(F.when(F.col("arm").isNotNull(), p)),
        F.count(F.when(F.col("arm") == TREATMENT, 1)),
        F.count(F.when(F.col("arm") == CONTROL, 1)),
        F.coalesce(F.sum(loss), F.lit(0.0)),
        F.coalesce(F.sum(F.when(F.col("rank") <= top_k, loss)), F.lit(0.0)),
        F.coalesce(F.sum(F.when(F.col("loss_rank") <= top_k, loss)), F.lit(0.0)),
    ).first()
    return summary_figures(row)


def retention_list(scores: DataFrame, rank_by: str, arm: str) -> pd.DataFrame:
    """One arm of the month's targeted users in `rank_by` order (score.py's `retention_list`)."""
    from pyspark.sql import functions as F

    order = RANK_COLUMN[check_rank_by(rank_by)]
    frame = (
        scores.where(F.col("arm") == arm)
        .orderBy(order)
        .select(order, ENTITY, "churn_probability", FEE, "expected_loss", "decile", "reasons")
        .toPandas()
    )
    frame.columns = list(RETENTION_COLUMNS)
    return frame


def score_on_spark(
    month: Month,
    model: PipelineModel,
    champion: RegisteredVersion,
    settings: Settings,
    options: dict[str, Any],
) -> tuple[int, dict[str, float], dict[str, pd.DataFrame]]:
    """The month scored, ranked and swapped into the lake, its campaign recorded in Postgres;
    returns the rows written, the summary figures and the two arms' lists. `options`: top_k,
    rank_by, control_share, horizon_months."""
    import psycopg

    from streamflow_mlops.data.spark import spark_session
    from streamflow_mlops.data.warehouse import create_schema

    spark = spark_session(settings)
    written = write_month_scores(spark, settings, month, model, champion, options)
    scores = month_scores(spark, settings, month)
    targeted = scores.where(scores["arm"].isNotNull()).toPandas()
    with psycopg.connect(settings.db_url) as conn:
        create_schema(conn)
        with conn.transaction():
            record_campaign_rows(conn, month, targeted, options["rank_by"], options["control_share"])
    figures = month_summary(scores, champion.threshold, options["top_k"])
    lists = {arm: retention_list(scores, options["rank_by"], arm) for arm in (TREATMENT, CONTROL)}
    return written, figures, lists


def newest_lake_month(settings: Settings) -> Month | None:
    """The newest month with users in the lake, or None before the first load."""
    from pyspark.errors import AnalysisException

    from streamflow_mlops.data.spark import spark_session
    from streamflow_mlops.features.definitions import lake_table_sql

    try:
        row = (
            spark_session(settings).sql(f"SELECT max(as_of) FROM {lake_table_sql(settings.lake_url, 'users')}").first()
        )
    except AnalysisException:  # nothing loaded: the table's folder does not exist yet
        return None
    return None if row[0] is None else Month.of_as_of(row[0])


def labelled_scores_on_spark(settings: Settings, month: Month, scored_users: int, sample_rows: int) -> pd.DataFrame:
    """score.py's `labelled_scores` on the spark engine: the same users, labels and probabilities."""
    import pandas as pd
    import psycopg

    from streamflow_mlops.config.settings import WAREHOUSE_SCHEMA
    from streamflow_mlops.data.spark import spark_session
    from streamflow_mlops.features.definitions import lake_table_sql
    from streamflow_mlops.features.retrieval import sample_condition
    from streamflow_mlops.pipelines.campaigns import campaign_for_labels

    spark = spark_session(settings)
    campaign = campaign_for_labels(settings.db_url, month.as_of)
    with psycopg.connect(settings.db_url) as conn:
        treated = conn.execute(
            f"SELECT user_id FROM {WAREHOUSE_SCHEMA}.retention_campaigns WHERE month = %s AND arm = %s",
            (campaign.name if campaign else None, TREATMENT),
        ).fetchall()
    month_scores(spark, settings, month).createOrReplaceTempView("streamflow_month_scores")
    spark.createDataFrame(
        pd.DataFrame({ENTITY: [r[0] for r in treated]}, dtype=object), f"{ENTITY} string"
    ).createOrReplaceTempView("streamflow_treated")
    sample = sample_condition(scored_users, sample_rows, column="s.user_id", engine="spark")
    try:
        rows = spark.sql(
            "SELECT s.user_id, l.churn_label, s.churn_probability FROM streamflow_month_scores s "
            f"JOIN {lake_table_sql(settings.lake_url, 'labels')} l ON l.user_id = s.user_id AND l.as_of = s.as_of "
            "LEFT ANTI JOIN streamflow_treated t ON t.user_id = s.user_id" + (f" WHERE {sample}" if sample else "")
        ).toPandas()
    finally:
        spark.catalog.dropTempView("streamflow_month_scores")
        spark.catalog.dropTempView("streamflow_treated")
    return rows[[ENTITY, "churn_label", "churn_probability"]]
