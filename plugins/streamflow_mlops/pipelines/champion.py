"""Moving the champion: promote a challenger after training, roll back on request (the alias moves, the model
is imported to BentoML first)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from streamflow_mlops.config.settings import CHAMPION_ALIAS, REGISTERED_MODEL
from streamflow_mlops.model.bento_import import import_to_bentoml
from streamflow_mlops.model.registry import UnknownVersionError, champion_version, existing_versions, utc_now
from streamflow_mlops.model.tracking import configure_mlflow

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)


def promote_and_import(decision: dict[str, Any]) -> dict[str, Any]:
    """Make the challenger of a `promote` decision the champion (alias + BentoML import)."""
    if not decision.get("promote"):
        raise ValueError(f"decision for version {decision.get('version')} is not to promote: {decision.get('reason')}")
    client = configure_mlflow()
    version = str(decision["version"])
    previous = champion_version(client)
    champion = set_champion(
        client, version, {"previous_champion": str(previous.version) if previous else "", "decision": "promoted"}
    )
    log.info("version %s is the champion (was %s)", version, champion["previous_version"])
    return champion


def rollback_champion(version: str | int | None, by: str, reason: str) -> dict[str, Any]:
    """Point the alias at `version`, or at the version the current champion replaced, and
    re-import it; who and why become tags on it."""
    from mlflow.exceptions import MlflowException

    client = configure_mlflow()
    current = champion_version(client)
    existing = existing_versions(client)
    if version in (None, ""):
        if current is None:
            raise UnknownVersionError(f"{REGISTERED_MODEL} has no champion to roll back from; versions: {existing}")
        target = current.tags.get("previous_champion", "")
        if not target:
            raise UnknownVersionError(
                f"champion version {current.version} replaced no earlier champion; pass a version (one of {existing})"
            )
    else:
        target = str(version).strip()
        try:
            client.get_model_version(REGISTERED_MODEL, target)
        except MlflowException as error:
            raise UnknownVersionError(
                f"{REGISTERED_MODEL} has no version {target!r}; versions that exist: {existing}"
            ) from error
    champion = set_champion(
        client,
        target,
        {
            "rollback_by": by,
            "rollback_at": utc_now(),
            "rollback_reason": reason,
            "rolled_back_from": str(current.version) if current else "",
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
    return champion


def _set_tags(client: MlflowClient, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(REGISTERED_MODEL, version, key, value)


def set_champion(client: MlflowClient, version: str, tags: dict[str, str]) -> dict[str, Any]:
    """Import `version` into BentoML, point the alias at it, tag it and the version it replaces."""
    previous = champion_version(client)
    bento = import_to_bentoml(client, version)
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version)
    now = utc_now()
    if previous is not None and str(previous.version) != version:
        _set_tags(client, str(previous.version), {"replaced_at": now, "replaced_by": version})
    _set_tags(client, version, {"champion_since": now, **tags})
    model_version = client.get_model_version(REGISTERED_MODEL, version)
    return {
        "version": str(version),
        "month": model_version.tags.get("month", ""),
        "as_of": model_version.tags.get("as_of", ""),
        "run_id": model_version.run_id,
        "bento_tag": bento,
        "previous_version": str(previous.version) if previous else None,
    }
