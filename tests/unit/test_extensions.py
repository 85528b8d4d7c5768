"""The boundary around third-party internals (streamflow_mlops/extensions): every upstream object an
extension patches, subclasses or calls by a private name is pinned to the source it was written
against, so an upgrade that changes one fails here, naming the extension to re-check."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sqlite3
import subprocess
import sys
from types import ModuleType

import pytest

from streamflow_mlops.extensions import bentoml as bentoml_extension
from streamflow_mlops.extensions import feast as feast_extension
from streamflow_mlops.extensions import great_expectations as ge_extension
from streamflow_mlops.extensions.feast import sqlite_store

EXTENSIONS: tuple[ModuleType, ...] = (bentoml_extension, feast_extension, ge_extension)

# sha256 (first 16 hex digits) of each patched object's source, at the extension's UPSTREAM.
PINNED = {
    "bentoml._internal.server.http.traffic:TimeoutMiddleware.__call__": "fd8b9e3da28ed2b4",
    "bentoml._internal.server.http.traffic:TimeoutMiddleware.__init__": "657435a0bd7f971c",
    "bentoml._internal.models.model:ModelStore.__init__": "58067d1d819c4fdd",
    "great_expectations.expectations.expectation:_format_map_output": "bc59b4bb2e0c038d",
    "great_expectations.expectations.core.expect_table_row_count_to_be_between:"
    "ExpectTableRowCountToBeBetween._validate": "1ac4fa20e4588b5c",
    "great_expectations.expectations.core.expect_table_row_count_to_equal:"
    "ExpectTableRowCountToEqual._validate": "f26141f1fa07f47f",
    "great_expectations.expectations.metrics.map_metric_provider.map_condition_auxilliary_methods:"
    "_spark_map_condition_index": "13cb4a349eef4c7f",
    "feast.infra.compute_engines.local.compute:LocalComputeEngine._materialize_one": "a5dcf23bb4471a8b",
    "feast.infra.compute_engines.local.compute:LocalComputeEngine._get_backend": "51fb0078cc4ce994",
    "feast.infra.compute_engines.local.feature_builder:LocalFeatureBuilder": "14a602f7df7e4c0a",
    "feast.infra.compute_engines.dag.plan:ExecutionPlan.execute": "fa487efc9a50aed6",
    "feast.infra.compute_engines.local.nodes:LocalOutputNode.execute": "f81c5527eb80a8c3",
    "feast.infra.compute_engines.local.nodes:LocalSourceReadNode.execute": "754c3a72b153230c",
    "feast.infra.compute_engines.local.nodes:LocalFilterNode.execute": "72ce9f01a4f5d45e",
    "feast.infra.compute_engines.local.nodes:LocalDedupNode.execute": "fcad43622eb94f51",
    "feast.utils:_coerce_datetime": "fd957fb33ffcb0ac",
    "feast.infra.online_stores.sqlite:SqliteOnlineStore._get_conn": "d12b367dce4b6888",
    "feast.infra.online_stores.sqlite:SqliteOnlineStore.online_write_batch": "46515d7f155c9986",
    "feast.infra.online_stores.sqlite:SqliteOnlineStore.update": "d4fe5aa559208dff",
    "feast.infra.online_stores.sqlite:_table_id": "0bac9edcaa873aaa",
    "feast.infra.online_stores.sqlite:_quote_id": "9ef43569b934d5a5",
    "feast.feature_store:FeatureStore._get_provider": "152985cbc91c4a47",
    "feast.infra.offline_stores.contrib.postgres_offline_store.postgres:"
    "PostgreSQLRetrievalJob._to_arrow_internal": "084d8fd0b477b6a7",
    "feast.infra.offline_stores.contrib.postgres_offline_store.postgres:"
    "PostgreSQLRetrievalJob.__init__": "6dfb20131322d2ce",
    "feast.infra.utils.postgres.connection_utils:_get_conn": "5dd462e6d7f60ce2",
    "feast.infra.offline_stores.contrib.spark_offline_store.spark:SparkRetrievalJob.__init__": "b44d99e95f8c819b",
    "feast.infra.offline_stores.contrib.spark_offline_store.spark:SparkRetrievalJob.to_spark_df": "51d0dc0274cf28e5",
}


def resolve(name: str):
    module, qualified = name.split(":")
    found = importlib.import_module(module)
    for part in qualified.split("."):
        found = getattr(found, part)
    return found


def test_every_patched_object_is_pinned_and_every_extension_names_its_upstream():
    declared = {name for extension in EXTENSIONS for name in extension.PATCHED}
    assert declared == set(PINNED)
    for extension in EXTENSIONS:
        package, version = extension.UPSTREAM.split("==")
        assert importlib.import_module(package), extension.__name__
        assert version and extension.__doc__, extension.__name__


@pytest.mark.parametrize("extension,name", [(e, n) for e in EXTENSIONS for n in e.PATCHED])
def test_the_patched_upstream_code_is_the_code_the_extension_was_written_against(extension, name):
    found = resolve(name)
    if getattr(found, "__module__", None) == extension.__name__:  # the patch is installed in this process
        found = extension.replaced(name)
    source = inspect.getsource(found)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    assert digest == PINNED[name], (
        f"{name} changed upstream since {extension.UPSTREAM}: re-check {extension.__name__} against the new code, "
        f"then pin {digest}"
    )


def test_the_sqlite_layout_the_service_reads_is_the_one_feast_creates(tmp_path):
    """Feast's own SqliteOnlineStore.update creates the table; the direct reader's query runs on it."""
    from feast.infra.online_stores.sqlite import SqliteOnlineStore
    from feast.repo_config import RepoConfig

    from streamflow_mlops.features.definitions import FEATURE_VIEWS

    view = next(iter(FEATURE_VIEWS.values()))
    config = RepoConfig(
        project="contract",
        provider="local",
        registry=str(tmp_path / "registry.db"),
        online_store={"type": "sqlite", "path": str(tmp_path / "online.db")},
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
    )
    SqliteOnlineStore().update(config, [], [view], [], [], partial=False)
    with sqlite3.connect(tmp_path / "online.db") as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert sqlite_store.table_name("contract", view.name) in tables
        names = [f.name for f in view.features]
        query = sqlite_store.select_features("contract", view.name, 2, len(names))
        assert conn.execute(query, [b"a", b"b", *names]).fetchall() == []


def test_the_request_timer_fix_replaces_bentomls_handler_once(monkeypatch):
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    monkeypatch.setattr(TimeoutMiddleware, "__call__", TimeoutMiddleware.__call__)
    assert bentoml_extension.install_request_timer_fix()
    patched = TimeoutMiddleware.__call__
    assert bentoml_extension.install_request_timer_fix() and TimeoutMiddleware.__call__ is patched


PINNED_STORE_PROBE = """
import sys
from pathlib import Path

import bentoml

from streamflow_mlops.extensions.bentoml import pinned_model_store

home = Path(sys.argv[1])
with pinned_model_store(home / "models"):
    with bentoml.models.create("contract_probe") as model:
        tag = str(model.tag)
    assert [str(m.tag) for m in bentoml.models.list("contract_probe")] == [tag]
assert (home / "models" / "contract_probe").is_dir()
"""


def test_the_pinned_model_store_is_where_bentoml_writes_within_the_block(tmp_path):
    """In a process of its own: BentoML caches its home on first use, and this test must not pick it."""
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "elsewhere")}
    done = subprocess.run(
        [sys.executable, "-c", PINNED_STORE_PROBE, str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (tmp_path / "elsewhere" / "models" / "contract_probe").exists()
