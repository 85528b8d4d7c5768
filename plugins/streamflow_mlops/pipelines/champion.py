"""Moving the champion: promote a challenger after training, roll back on request.

Every move is a compare-and-set on the `champion` alias and safe to retry:
- the model is imported into BentoML and the target version tagged *before* the alias moves, so a
  service following the alias never looks for a model its store lacks, and a retry after a failure
  anywhere later finds the move already made (`request` tag = the Airflow run) and only writes the
  tags that follow the move (`champion_since`, `replaced_by`) if the failed try had not;
- the alias moves only if it still points where the decision saw it: a promotion compared against
  champion v3 must not replace a v4 that another run promoted meanwhile (`ChampionMovedError`).
MLflow has no atomic compare-and-set, so the DAGs also run these tasks one at a time (a pool of one
slot); the check closes the window a retry or a manual alias edit would leave.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from streamflow_mlops.config.settings import CHAMPION_ALIAS, REGISTERED_MODEL
from streamflow_mlops.model.bento_import import import_to_bentoml
from streamflow_mlops.model.registry import (
    UnknownVersionError,
    champion_version,
    existing_versions,
    load_version,
    utc_now,
)
from streamflow_mlops.model.tracking import configure_mlflow

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)


class ChampionMovedError(RuntimeError):
    """The alias no longer points where the decision to move it was made."""


def _set_tags(client: MlflowClient, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(REGISTERED_MODEL, version, key, value)


def _summary(client: MlflowClient, version: str, bento: str, previous: str | None) -> dict[str, Any]:
    registered = load_version(client, version)
    return {
        "version": str(version),
        "month": registered.month_name,
        "as_of": registered.as_of,
        "run_id": registered.run_id,
        "bento_tag": bento,
        "previous_version": previous,
    }


def _version_or_none(version: ModelVersion | None) -> str | None:
    return None if version is None else str(version.version)


def set_champion(client: MlflowClient, version: str, expected: str | None, tags: dict[str, str]) -> dict[str, Any]:
    """Import `version` into BentoML, tag it, then point the alias at it if the alias still points
    at `expected` (None: no champion); the replaced version gets `replaced_by`."""
    bento = import_to_bentoml(client, version)
    _set_tags(client, version, tags)
    current = _version_or_none(champion_version(client))
    if current != expected:
        raise ChampionMovedError(
            f"the champion moved to {current} (expected {expected}) before version {version} could replace it; "
            "nothing was changed: re-run to decide against the current champion"
        )
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version)
    now = utc_now()
    _set_tags(client, version, {"champion_since": now})
    if expected is not None and expected != version:
        _set_tags(client, expected, {"replaced_at": now, "replaced_by": version})
    return _summary(client, version, bento, expected)


def complete_move(
    client: MlflowClient, current: ModelVersion, previous: str | None, moved_at: str | None = None
) -> list[str]:
    """For a retry that finds the alias already on `current`: the tags `set_champion` writes after
    moving it (`champion_since`; `replaced_at`/`replaced_by` on `previous`), where the process that
    moved it died before writing them; a replaced version keeping no `replaced_by` would read as a
    champion still. `moved_at` is a tag the move wrote before the alias (a rollback's `rollback_at`):
    a version rolled back to keeps its `champion_since` from an earlier reign, older than that.
    Returns what it wrote ([] when the move was complete)."""
    version = str(current.version)
    now = utc_now()
    written = []
    since = current.tags.get("champion_since", "")
    if not since or (moved_at and since < moved_at):
        _set_tags(client, version, {"champion_since": now})
        written.append(f"champion_since on {version}")
    if previous is not None and previous != version:
        replaced = client.get_model_version(REGISTERED_MODEL, previous)
        if replaced.tags.get("replaced_by") != version or (
            moved_at and replaced.tags.get("replaced_at", "") < moved_at
        ):
            _set_tags(client, previous, {"replaced_at": now, "replaced_by": version})
            written.append(f"replaced_by on {previous}")
    return written


def promote_and_import(
    decision: dict[str, Any], request: str = "", review: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Make the challenger of a `promote` decision the champion (BentoML import, then the alias).

    The decision's `champion_version` is the version it was compared against: the alias moves only
    from there. A retry after the alias moved returns the same answer and writes only the tags the
    failed try had not (`complete_move`).
    `review` (pipelines/review.py `Review.tags()`) records who approved it, on the version.
    """
    if not decision.get("promote"):
        raise ValueError(f"decision for version {decision.get('version')} is not to promote: {decision.get('reason')}")
    client = configure_mlflow()
    version = str(decision["version"])
    expected = decision.get("champion_version") or None
    current = champion_version(client)
    if current is not None and str(current.version) == version:
        written = complete_move(client, current, expected)
        log.info(
            "version %s is already the champion (a retried promotion): %s",
            version,
            f"completed its move ({', '.join(written)})" if written else "nothing to do",
        )
        return _summary(client, version, import_to_bentoml(client, version), expected)
    champion = set_champion(
        client,
        version,
        expected,
        {"previous_champion": expected or "", "decision": "promoted", "request": request, **(review or {})},
    )
    log.info("version %s is the champion (was %s)", version, champion["previous_version"])
    return champion


def rollback_target(current: ModelVersion | None, version: str | None, existing: list[str]) -> str:
    """The version a rollback moves to: the one asked for, else the one the champion replaced."""
    if version not in (None, ""):
        target = str(version).strip()
        if target not in existing:
            raise UnknownVersionError(f"{REGISTERED_MODEL} has no version {target!r}; versions that exist: {existing}")
        return target
    if current is None:
        raise UnknownVersionError(f"{REGISTERED_MODEL} has no champion to roll back from; versions: {existing}")
    target = current.tags.get("previous_champion", "")
    if not target:
        raise UnknownVersionError(
            f"champion version {current.version} replaced no earlier champion; pass a version (one of {existing})"
        )
    return target


def rollback_champion(version: str | int | None, by: str, reason: str, request: str = "") -> dict[str, Any]:
    """Point the alias at `version`, or at the version the current champion replaced, and
    re-import it; who and why become tags on it, and are in the summary returned (`by`, `reason`).
    `request` (the Airflow run id) makes a retry of the same request complete that move (`complete_move`)
    instead of taking a second step back."""
    client = configure_mlflow()
    current = champion_version(client)
    if request and current is not None and current.tags.get("rollback_request") == request:
        written = complete_move(
            client, current, current.tags.get("rolled_back_from") or None, current.tags.get("rollback_at") or None
        )
        log.info(
            "rollback %s already moved the champion to %s: %s",
            request,
            current.version,
            f"completed its move ({', '.join(written)})" if written else "nothing to do",
        )
        return _summary(client, str(current.version), import_to_bentoml(client, str(current.version)), None) | {
            "previous_version": current.tags.get("rolled_back_from") or None,
            "by": by,
            "reason": reason,
        }
    target = rollback_target(current, None if version is None else str(version), existing_versions(client))
    champion = set_champion(
        client,
        target,
        _version_or_none(current),
        {
            "rollback_by": by,
            "rollback_at": utc_now(),
            "rollback_reason": reason,
            "rolled_back_from": _version_or_none(current) or "",
            "rollback_request": request,
        },
    )
    log.info(
        "rolled %s back to version %s (from %s) by %s: %s",
        REGISTERED_MODEL,
        target,
        champion["previous_version"],
        by,
        reason,
    )
    return champion | {"by": by, "reason": reason}
