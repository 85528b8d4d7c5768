"""Feast over a real Postgres and a real feature repo (sqlite online store, the embedded default)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from feast import FeatureStore

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY, FEATURE_GROUPS, FEATURE_NAMES, LABEL, TIMESTAMP
from streamflow_mlops.config.settings import get_settings
from streamflow_mlops.features.materialize import materialization_window, materialize_month
from streamflow_mlops.features.online import online_features
from streamflow_mlops.features.parity import FeatureParityError, check_parity, parity_sample_users
from streamflow_mlops.features.retrieval import build_training_set, feature_frame
from streamflow_mlops.features.store import apply_repo, feature_names, feature_store, repo_config
from streamflow_mlops.platform.embedded import write_env_file
from tests.conftest import load_months

USERS = 300


def snapshot_rows(settings, as_of) -> dict[str, dict]:
    """user -> every feature, read straight from the snapshot tables at one as_of."""
    rows: dict[str, dict] = {}
    with psycopg.connect(settings.db_url) as conn:
        for g in FEATURE_GROUPS:
            cols = [c.name for c in g.columns]
            cur = conn.execute(
                f"SELECT {ENTITY}, {', '.join(cols)} FROM streamflow.{g.table} WHERE {TIMESTAMP} = %s", (as_of,)
            )
            for user, *values in cur:
                rows.setdefault(user, {}).update(zip(cols, values, strict=True))
    return rows


def online_table_digest(settings) -> list[tuple]:
    with sqlite3.connect(settings.state_dir / "online_store.db") as conn:
        return [
            row
            for g in FEATURE_GROUPS
            for row in conn.execute(
                f"SELECT entity_key, feature_name, value, event_ts FROM streamflow_{g.name} "
                "ORDER BY entity_key, feature_name"
            )
        ]


def test_training_set_is_point_in_time_with_two_months_loaded(stack_env, tmp_path):
    load_months(stack_env.db_url, tmp_path / "drops", (0, 1), USERS)
    apply_repo()
    assert feature_names() == list(FEATURE_NAMES)

    for month in (Month(0), Month(1)):
        as_of = month.as_of_ts
        training = build_training_set(month)
        assert list(training.columns) == [ENTITY, TIMESTAMP, *FEATURE_NAMES, LABEL]
        assert len(training) == USERS and (training[TIMESTAMP] == as_of).all()
        assert training[list(FEATURE_NAMES)].notna().all().all()
        expected = snapshot_rows(stack_env, as_of)
        got = {r[ENTITY]: {n: r[n] for n in FEATURE_NAMES} for r in training.to_dict("records")}
        assert got == expected, f"{month}: training values differ from that month's snapshots"
    # month_001 is drifted, so equal values above prove month_000 did not see month_001's rows.
    january = build_training_set(Month(0)).set_index(ENTITY)
    february = build_training_set(Month(1)).set_index(ENTITY)
    assert (january["watch_hours_30d"] != february.loc[january.index, "watch_hours_30d"]).mean() > 0.9

    drift_frame = feature_frame(Month(1))
    assert LABEL not in drift_frame.columns and len(drift_frame) == USERS


def test_materialize_parity_unknown_users_and_idempotence(stack_env, tmp_path):
    load_months(stack_env.db_url, tmp_path / "drops", (0, 1), USERS)
    apply_repo()

    # month_001 is loaded too: going back to month_000 takes a deliberate backfill.
    first = materialize_month("month_000", force=True)
    assert first["as_of"] == "2024-01-31" and set(first["users"].values()) == {USERS}
    assert check_parity("month_000")["mismatches"] == 0

    materialize_month("month_001")
    assert check_parity("month_001", sample=USERS)["users_checked"] == USERS
    digest = online_table_digest(stack_env)
    # An older month re-run without force leaves the online store on the newest month.
    back = materialize_month("month_000")
    assert "back in time" in back["skipped"] and online_table_digest(stack_env) == digest
    known = sorted(snapshot_rows(stack_env, Month(1).as_of_ts))[:3]
    apply_repo()  # the DAG applies on every run: serving must go on in between
    assert set(online_features(known).complete) == set(known)
    again = materialize_month("month_001", workers=2)  # the split path writes the same rows
    assert again["workers"] == 2 and online_table_digest(stack_env) == digest

    # Feast's stock engine (one proto and one INSERT per value) over the same store: not a byte changes.
    stock = repo_config(stack_env)
    stock.batch_engine_config = "local"
    start, end = materialization_window(Month(1).as_of_ts, timedelta(days=31))
    FeatureStore(repo_path=str(stack_env.feature_repo), config=stock).materialize(start_date=start, end_date=end)
    assert online_table_digest(stack_env) == digest

    lookup = online_features(["0000-NOONE", *known, known[0]])
    assert lookup.unknown == ("0000-NOONE",)
    assert list(lookup.values) == known and lookup.missing == {}
    assert lookup.feature_names == tuple(FEATURE_NAMES)
    assert set(lookup.complete) == set(known)


def test_missing_values_are_reported_and_parity_fails_loudly(stack_env, tmp_path):
    load_months(stack_env.db_url, tmp_path / "drops", (0,), USERS)
    as_of = Month(0).as_of_ts
    with psycopg.connect(stack_env.db_url) as conn:
        sample = parity_sample_users(conn, as_of, 2)
        conn.execute("DELETE FROM streamflow.payments_agg_90d_snapshots WHERE user_id = %s", (sample[0],))
    apply_repo()
    materialize_month("month_000")

    lookup = online_features([sample[0]])
    assert lookup.unknown == () and lookup.missing == {sample[0]: ("failed_payments_90d",)}
    assert lookup.values[sample[0]]["failed_payments_90d"] is None and lookup.complete == {}

    with psycopg.connect(stack_env.db_url) as conn:
        conn.execute(
            "UPDATE streamflow.usage_agg_30d_snapshots SET skips_7d = skips_7d + 1 WHERE user_id = %s", (sample[1],)
        )
    with pytest.raises(FeatureParityError, match=rf"{sample[1]}\.skips_7d"):
        check_parity("month_000")


def test_apply_makes_online_tables_in_a_new_state_dir_over_the_same_registry(stack_env, tmp_path, monkeypatch):
    """An external Postgres keeps the registry; a new STREAMFLOW_HOME starts an empty sqlite file."""
    load_months(stack_env.db_url, tmp_path / "drops", (0,), USERS)
    apply_repo()
    monkeypatch.setenv("STREAMFLOW_HOME", str(tmp_path / "another_state"))
    get_settings.cache_clear()
    apply_repo()
    assert set(materialize_month("month_000")["users"].values()) == {USERS}
    assert check_parity("month_000")["mismatches"] == 0


def test_apply_removes_what_the_repo_no_longer_declares(stack_env):
    """A view registered by an earlier version of the repo is dropped from the shared registry,
    as `feast apply` does: materialization lists the registry's views."""
    import copy

    from streamflow_mlops.features.definitions import FEATURE_VIEWS

    apply_repo()
    store = feature_store()
    retired = copy.copy(next(iter(FEATURE_VIEWS.values())))
    retired.name = "retired_view"
    store.apply([retired])
    assert "retired_view" in {v.name for v in store.list_feature_views()}
    apply_repo()
    store.refresh_registry()
    assert {v.name for v in store.list_feature_views()} == set(FEATURE_VIEWS)


def test_materializing_a_month_that_is_not_loaded_fails(stack_env, tmp_path):
    load_months(stack_env.db_url, tmp_path / "drops", (0,), USERS)
    apply_repo()
    with pytest.raises(ValueError, match="no snapshot rows"):
        materialize_month("month_005")


@pytest.mark.slow
def test_feast_cli_applies_and_materializes_with_the_env_file(stack_env, tmp_path):
    """`feast apply` / `feast materialize` from a shell that sourced .streamflow/env."""
    load_months(stack_env.db_url, tmp_path / "drops", (0,), USERS)
    env_file = write_env_file(stack_env)
    start, end = materialization_window(Month(0).as_of_ts, timedelta(days=31))
    # Only PATH and HOME from here: everything Feast needs must come from the env file.
    shell_env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    for args in ("apply", f"materialize {start.isoformat()} {end.isoformat()}"):
        script = f'source "{env_file}" && feast -c "{stack_env.feature_repo}" {args}'
        done = subprocess.run(["bash", "-c", script], env=shell_env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    assert check_parity("month_000")["mismatches"] == 0
