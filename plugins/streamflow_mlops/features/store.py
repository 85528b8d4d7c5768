"""The Feast store over the warehouse: its config, the FeatureStore, `feast apply`, the FeatureService.

One `FeatureStore` per settings, built from `feature_repo/feature_store.yaml` with the `${VARS}`
of `Settings.feast_env()` laid over the process environment, so the CLI (`source .streamflow/env`)
and the in-process code read the same file the same way without touching `os.environ`.

Two Feast plugins named in that file do the heavy lifting (extensions/feast): `BulkComputeEngine`
materializes into the sqlite online store in bulk, `HashJoinPostgreSQLOfflineStore` keeps the
point-in-time join linear.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from collections.abc import Mapping
from contextlib import closing
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from streamflow_mlops.config.settings import FEATURE_SERVICE, Settings, get_settings

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore
    from feast.repo_config import RepoConfig

log = logging.getLogger(__name__)

FEATURE_STORE_YAML = "feature_store.yaml"
SQLITE_BUSY_TIMEOUT_MS = 600_000
_VAR = re.compile(r"\$(\w+)|\$\{([^}]*)\}")


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """`os.path.expandvars` with an explicit mapping: `$NAME`/`${NAME}` replaced, unknown ones kept."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return env.get(name, match.group(0))

    return _VAR.sub(substitute, text)


def repo_config(settings: Settings | None = None) -> RepoConfig:
    """The RepoConfig of `feature_repo/`, variables taken from settings over the environment."""
    import yaml
    from feast.repo_config import RepoConfig

    settings = settings or get_settings()
    env = {**os.environ, **settings.feast_env()}
    text = settings.feature_store_yaml.read_text()
    config = RepoConfig(**yaml.safe_load(expand_vars(text, env)))
    config.repo_path = settings.feature_repo
    return config


@lru_cache(maxsize=4)
def _feature_store(settings: Settings) -> FeatureStore:
    from feast import FeatureStore

    # Feast's sqlite store makes the database's folder but not its parents.
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(settings.feature_repo), config=repo_config(settings))


def feature_store(settings: Settings | None = None) -> FeatureStore:
    """The FeatureStore for these settings, built once per settings and reused."""
    return _feature_store(settings or get_settings())


def repo_contents(project: str, settings: Settings | None = None):
    """What `feast apply` would find in `feature_repo/`: the library's definitions on the settings'
    engine, plus the project and Feast's dummy entity (for entity-less views) that its own repo
    parser adds."""
    from feast.feature_view import DUMMY_ENTITY
    from feast.project import Project
    from feast.repo_contents import RepoContents

    from streamflow_mlops.features.definitions import churn_feature_service, feature_views, sources, user

    source_by_group = sources(settings)
    views = feature_views(source_by_group)
    return RepoContents(
        projects=[Project(name=project)],
        data_sources=list(source_by_group.values()),
        feature_views=list(views.values()),
        on_demand_feature_views=[],
        stream_feature_views=[],
        label_views=[],
        entities=[user, DUMMY_ENTITY],
        feature_services=[churn_feature_service(views)],
        permissions=[],
    )


def apply_repo(settings: Settings | None = None) -> dict[str, list[str]]:
    """`feast apply` in-process: register the repo's objects in the SQL registry, create online
    tables, and remove from the registry (and the online store) what the repo no longer declares.

    `FeatureStore.apply` creates the online tables of every view it is given (CREATE TABLE IF NOT
    EXISTS), also when the shared registry already knew them: a new state dir over an external
    Postgres registry gets its sqlite tables too."""
    from feast.repo_operations import extract_objects_for_apply_delete

    settings = settings or get_settings()
    store = feature_store(settings)
    contents = repo_contents(store.project, settings)
    _, retired, _, _ = extract_objects_for_apply_delete(store.project, store.registry, contents)
    store.apply(
        [
            *contents.projects,
            *contents.data_sources,
            *contents.entities,
            *contents.feature_views,
            *contents.feature_services,
        ],
        objects_to_delete=retired,
        partial=False,
    )
    store.refresh_registry()
    path = sqlite_path(store)
    if path is not None:
        # WAL (a property of the file, kept across connections): the service keeps reading while a
        # materialization writes, instead of waiting on, or timing out behind, the writer's lock.
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA journal_mode = WAL")
    summary = {
        "entities": sorted(e.name for e in contents.entities if e.name != "__dummy"),
        "feature_views": sorted(v.name for v in contents.feature_views),
        "feature_services": sorted(s.name for s in contents.feature_services),
    }
    if retired:
        log.info("feast apply removed what the repo no longer declares: %s", sorted(o.name for o in retired))
    log.info("feast apply: %s", summary)
    return summary


def feature_service(name: str = FEATURE_SERVICE, settings: Settings | None = None) -> FeatureService:
    """The FeatureService as registered (not as declared in the repo files)."""
    return feature_store(settings).get_feature_service(name)


def feature_names(feature_service_name: str = FEATURE_SERVICE, settings: Settings | None = None) -> list[str]:
    """The features of a registered FeatureService, in its order: THE feature list."""
    service = feature_service(feature_service_name, settings)
    return [f.name for projection in service.feature_view_projections for f in projection.features]


def sqlite_path(store: FeatureStore) -> Path | None:
    """The file of Feast's sqlite online store (relative paths from the repo), or None for another store."""
    online = store.config.online_store
    if getattr(online, "type", None) != "sqlite":
        return None
    path = Path(online.path)
    return path if path.is_absolute() else Path(store.repo_path) / path
