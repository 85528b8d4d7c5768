"""Retention campaigns at the warehouse's edge: `retention_campaigns` written with each
exported list, `campaign_outcomes` measured once the next drop's labels are in, and which treated
users realized performance must leave out.

Timing. The list of month M is worked during the period after M's as_of; the first labels that can
show its effect are the ones the **next drop** (M+1) brings, whatever the layout: with the default
layout they label the period starting at M+1's as_of, with a label lag (`labels_as_of`) the period
starting at M's own as_of. So the outcomes of campaign M are drop M+1's labels, and drop D's labels
are changed by campaign D-1: realized performance on them leaves campaign D-1's treatment arm out
(its control arm and every untargeted user stay), and so does the dashboard's classification report.
The generator's `--treatment-effect` follows the same rule.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import TYPE_CHECKING, Any

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY, LABEL
from streamflow_mlops.config.settings import WAREHOUSE_SCHEMA, Settings, get_settings
from streamflow_mlops.monitoring.campaigns import RANK_COLUMN, TREATMENT, campaign_outcome, describe_outcome

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

S = WAREHOUSE_SCHEMA
OUTCOME_COLUMNS = (
    "month", "outcome_month", "outcome_as_of", "rank_by", "control_share", "horizon_months", "treated_users",
    "control_users", "treated_churned", "control_churned", "treated_churn_rate", "control_churn_rate", "difference",
    "difference_low", "difference_high", "confidence", "relative_reduction", "churners_saved", "revenue_saved",
    "revenue_saved_low", "revenue_saved_high", "control_mean_probability", "control_brier",
    "treated_mean_probability", "reached_users", "reach_rate", "effect_on_reached",
)  # fmt: skip


def record_campaign(conn: psycopg.Connection, month: Month, rank_by: str, control_share: float) -> int:
    """Replace the month's `retention_campaigns` rows with its targeted users (those with an arm in
    `churn_scores`), in the caller's transaction; returns the rows written. `contacted` says the
    user is on the exported contact list (the treatment arm); who was actually reached comes with
    the next drop's `contacts.csv`."""
    conn.execute(f"DELETE FROM {S}.retention_campaigns WHERE month = %s", (month.name,))
    cur = conn.execute(
        f"INSERT INTO {S}.retention_campaigns (month, user_id, as_of, arm, contacted, rank, rank_by, "
        "churn_probability, monthly_fee, expected_loss, control_share, model_version) "
        f"SELECT month, user_id, as_of, arm, arm = '{TREATMENT}', {RANK_COLUMN[rank_by]}, %s, churn_probability, "
        f"monthly_fee, expected_loss, %s, model_version FROM {S}.churn_scores WHERE month = %s AND arm IS NOT NULL",
        (rank_by, control_share, month.name),
    )
    return cur.rowcount


def campaign_for_labels(db_url: str, labels_as_of: date) -> Month | None:
    """The campaign month whose outcomes the labels stored at `labels_as_of` are: the month before
    the drop that brought them (its latest successful ingestion; a month loaded without one brought
    its own as_of's labels), None before the first month."""
    import psycopg

    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            f"SELECT month FROM {S}.ingestion_runs WHERE status = 'success' AND coalesce(labels_as_of, as_of) = %s "
            "ORDER BY run_id DESC LIMIT 1",
            (labels_as_of,),
        ).fetchone()
    drop = Month.parse(row[0]) if row else Month.of_as_of(labels_as_of)
    return drop.previous()


def treated_users(db_url: str, campaign_month: Month | None) -> frozenset[str]:
    """The treatment arm of a campaign month (empty when there was none): users whose next outcome
    the campaign may have changed. A few hundred ids a month (the list's length, not the month's)."""
    if campaign_month is None:
        return frozenset()
    import psycopg

    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            f"SELECT user_id FROM {S}.retention_campaigns WHERE month = %s AND arm = %s",
            (campaign_month.name, TREATMENT),
        ).fetchall()
    return frozenset(r[0] for r in rows)


def campaign_rows(conn: psycopg.Connection, month: Month, labels_as_of: date, drop_as_of: date) -> Any:
    """The campaign's targeted users with their outcome (the labels at `labels_as_of`) and whether
    the next drop's contacts say they were reached (null when that drop has no contacts.csv)."""
    import pandas as pd

    rows = conn.execute(
        f"SELECT c.user_id, c.arm, l.{LABEL}, c.churn_probability, c.monthly_fee, k.user_id IS NOT NULL "
        f"FROM {S}.retention_campaigns c JOIN {S}.labels l ON l.user_id = c.user_id AND l.as_of = %s "
        f"LEFT JOIN {S}.contacts k ON k.user_id = c.user_id AND k.as_of = %s WHERE c.month = %s",
        (labels_as_of, drop_as_of, month.name),
    ).fetchall()
    frame = pd.DataFrame(rows, columns=[ENTITY, "arm", LABEL, "churn_probability", "monthly_fee", "reached"])
    (has_contacts,) = conn.execute(
        f"SELECT EXISTS (SELECT 1 FROM {S}.contacts WHERE as_of = %s)", (drop_as_of,)
    ).fetchone()
    return frame, bool(has_contacts)


def lake_campaign_rows(
    conn: psycopg.Connection, settings: Settings, month: Month, labels_as_of: date, drop_as_of: date
) -> Any:
    """`campaign_rows` on the spark engine: the campaign's rows (Postgres, a list's length) joined
    in Spark with the lake's labels and the next drop's contacts."""
    import pandas as pd
    from pyspark.errors import AnalysisException

    from streamflow_mlops.data.spark import spark_session
    from streamflow_mlops.features.definitions import lake_table_sql

    spark = spark_session(settings)
    targeted = pd.DataFrame(
        conn.execute(
            f"SELECT user_id, arm, churn_probability, monthly_fee FROM {S}.retention_campaigns WHERE month = %s",
            (month.name,),
        ).fetchall(),
        columns=[ENTITY, "arm", "churn_probability", "monthly_fee"],
    )
    spark.createDataFrame(
        targeted, f"{ENTITY} string, arm string, churn_probability double, monthly_fee double"
    ).createOrReplaceTempView("streamflow_campaign")
    try:
        contacts = spark.sql(
            f"SELECT {ENTITY} FROM {lake_table_sql(settings.lake_url, 'contacts')} WHERE as_of = DATE '{drop_as_of}'"
        )
        has_contacts = contacts.limit(1).count() > 0
    except AnalysisException:  # no drop has brought a contacts.csv yet
        contacts, has_contacts = spark.createDataFrame([], f"{ENTITY} string"), False
    contacts.createOrReplaceTempView("streamflow_contacts")
    try:
        frame = spark.sql(
            f"SELECT c.user_id, c.arm, l.{LABEL}, c.churn_probability, c.monthly_fee, "
            "k.user_id IS NOT NULL AS reached "
            f"FROM streamflow_campaign c JOIN {lake_table_sql(settings.lake_url, 'labels')} l "
            f"ON l.user_id = c.user_id AND l.as_of = DATE '{labels_as_of}' "
            "LEFT JOIN streamflow_contacts k ON k.user_id = c.user_id"
        ).toPandas()
    finally:
        spark.catalog.dropTempView("streamflow_campaign")
        spark.catalog.dropTempView("streamflow_contacts")
    return frame, has_contacts


def record_outcome(conn: psycopg.Connection, row: dict[str, Any]) -> None:
    """Upsert the campaign month's `campaign_outcomes` row (a re-measure replaces it)."""
    columns = ", ".join(OUTCOME_COLUMNS)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in OUTCOME_COLUMNS if c != "month")
    conn.execute(
        f"INSERT INTO {S}.campaign_outcomes ({columns}) VALUES ({', '.join(['%s'] * len(OUTCOME_COLUMNS))}) "
        f"ON CONFLICT (month) DO UPDATE SET {updates}, measured_at = now()",
        [row[c] for c in OUTCOME_COLUMNS],
    )


def measure_campaign(month: Month, settings: Settings | None = None) -> dict[str, Any]:
    """Measure one campaign month against the next drop's labels; records and returns
    `{"status": "measured", ...the campaign_outcomes row}` or `{"status": "pending" | "skipped", "reason"}`."""
    import psycopg

    from streamflow_mlops.features.retrieval import labels_as_of

    settings = settings or get_settings()
    outcome_month = month.next()
    outcome_as_of = labels_as_of(outcome_month, settings).date()
    with psycopg.connect(settings.db_url) as conn:
        campaign = conn.execute(
            f"SELECT min(rank_by), min(control_share), count(*) FROM {S}.retention_campaigns WHERE month = %s",
            (month.name,),
        ).fetchone()
        if not campaign[2]:
            return {"status": "skipped", "month": month.name, "reason": f"no retention list was exported for {month}"}
        if settings.engine == "spark":
            frame, has_contacts = lake_campaign_rows(conn, settings, month, outcome_as_of, outcome_month.as_of)
        else:
            frame, has_contacts = campaign_rows(conn, month, outcome_as_of, outcome_month.as_of)
        arms = set(frame["arm"])
        if len(frame) == 0:
            return {"status": "pending", "month": month.name, "reason": f"{outcome_month}'s labels are not loaded yet"}
        if arms != {"treatment", "control"}:
            return {"status": "skipped", "month": month.name, "reason": f"only the {sorted(arms)} arm has outcomes"}
        horizon = settings.value_horizon_months
        outcome = campaign_outcome(
            frame["arm"].to_numpy(), frame[LABEL].to_numpy(), frame["churn_probability"].to_numpy(),
            frame["monthly_fee"].to_numpy(), horizon, frame["reached"].to_numpy() if has_contacts else None,
        )  # fmt: skip
        row = {
            "month": month.name,
            "outcome_month": outcome_month.name,
            "outcome_as_of": outcome_as_of,
            "rank_by": campaign[0],
            "control_share": float(campaign[1]),
            "horizon_months": horizon,
            **outcome,
        }
        with conn.transaction():
            record_outcome(conn, row)
    log.info("%s", describe_outcome(month, row))
    return {"status": "measured", **row, "outcome_as_of": outcome_as_of.isoformat()}


def measure_campaigns(settings: Settings | None = None) -> list[dict[str, Any]]:
    """Measure every exported campaign whose next drop is in (a re-measure replaces the row, so the
    order months arrive in does not matter), add each measured month to the dashboard; returns one
    answer per campaign month, oldest first."""
    import psycopg

    from streamflow_mlops.data.warehouse import create_schema
    from streamflow_mlops.monitoring.dashboard import add_campaign_snapshot

    settings = settings or get_settings()
    with psycopg.connect(settings.db_url) as conn:
        create_schema(conn)
        rows = conn.execute(f"SELECT DISTINCT month FROM {S}.retention_campaigns ORDER BY month").fetchall()
    months = [Month.parse(m) for (m,) in rows]
    answers = []
    for month in months:
        answer = measure_campaign(month, settings)
        if answer["status"] == "measured":
            add_campaign_snapshot(month, answer, settings)
        answers.append(answer)
    return answers


def campaign_outcomes(db_url: str) -> list[dict[str, Any]]:
    """Every `campaign_outcomes` row, oldest campaign first (what the demo summary and a report read)."""
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        return conn.execute(f"SELECT {', '.join(OUTCOME_COLUMNS)} FROM {S}.campaign_outcomes ORDER BY month").fetchall()


def campaign_lines(db_url: str) -> list[str]:
    """One line per exported campaign for the demo summary: the list, then its outcome or why not yet."""
    import psycopg

    with psycopg.connect(db_url) as conn:
        lists = conn.execute(
            f"SELECT month, min(rank_by), count(*) FILTER (WHERE arm = '{TREATMENT}'), "
            f"count(*) FILTER (WHERE arm <> '{TREATMENT}'), sum(expected_loss) "
            f"FROM {S}.retention_campaigns GROUP BY month ORDER BY month"
        ).fetchall()
    measured = {row["month"]: row for row in campaign_outcomes(db_url)}
    lines = []
    for name, rank_by, treated, control, loss in lists:
        month = Month.parse(name)
        lines.append(
            f"campaign {month}: {treated} to contact, {control} held back (top by {rank_by}, "
            f"expected loss {loss:,.0f} over the horizon)"
        )
        outcome = measured.get(month.name)
        lines.append(
            f"  {describe_outcome(month, outcome)}"
            if outcome
            else f"  outcome pending: {month.next()}'s labels are not in yet"
        )
    return lines
