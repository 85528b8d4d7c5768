"""A promotion retried after its process died part-way (tests/faults, fault 2, in miniature): the
retry ends with one champion whose tags agree with the alias, whatever step the first try reached.

An in-memory stand-in for the MLflow client's registry calls; the BentoML import is stubbed.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from streamflow_mlops.pipelines import champion as champion_module
from streamflow_mlops.pipelines.champion import promote_and_import, rollback_champion


class Killed(BaseException):
    """The process dying at a given registry call (BaseException: nothing in the library catches it)."""


class Registry:
    """Versions, their tags and the aliases of `streamflow_churn`; `die_at` (call name, n) raises
    Killed at the n-th such call, once."""

    def __init__(self, versions: dict[str, dict[str, str]], champion: str | None) -> None:
        self.tags = {version: dict(tags) for version, tags in versions.items()}
        self.aliases = {"champion": champion} if champion else {}
        self.calls: list[str] = []
        self.die_at: tuple[str, int] | None = None

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.die_at and self.die_at[0] == name and self.calls.count(name) == self.die_at[1]:
            self.die_at = None
            raise Killed(name)

    def _version(self, version: str) -> SimpleNamespace:
        return SimpleNamespace(version=version, tags=dict(self.tags[version]), run_id=f"run-{version}", aliases=[])

    def get_model_version(self, name: str, version: str) -> SimpleNamespace:
        return self._version(str(version))

    def get_model_version_by_alias(self, name: str, alias: str) -> SimpleNamespace:
        if alias not in self.aliases:
            raise MlflowException(f"no alias {alias}", error_code=RESOURCE_DOES_NOT_EXIST)
        return self._version(self.aliases[alias])

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._call("set_model_version_tag")
        self.tags[str(version)][key] = value

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self._call("set_registered_model_alias")
        self.aliases[alias] = str(version)

    def promoted_not_replaced(self) -> list[str]:
        """Versions whose tags say they are the champion: promoted (or rolled back to) and not replaced."""
        return [v for v, t in self.tags.items() if t.get("decision") == "promoted" and not t.get("replaced_by")]


MONTH = {"month": "month_001", "as_of": "2024-02-29"}


@pytest.fixture
def registry(monkeypatch) -> Registry:
    registry = Registry(
        {
            "1": {"month": "month_000", "as_of": "2024-01-31", "decision": "promoted", "champion_since": "t0"},
            "2": {**MONTH, "decision": "promote"},
        },
        champion="1",
    )
    monkeypatch.setattr(champion_module, "configure_mlflow", lambda: registry)
    monkeypatch.setattr(champion_module, "import_to_bentoml", lambda client, version: f"streamflow_churn:v{version}")
    return registry


DECISION = {"promote": True, "version": "2", "champion_version": "1", "reason": "gain 0.02 >= 0.005"}


def assert_one_champion(registry: Registry) -> None:
    assert registry.aliases == {"champion": "2"}
    assert registry.promoted_not_replaced() == ["2"]
    assert registry.tags["2"]["champion_since"] and registry.tags["2"]["previous_champion"] == "1"
    assert registry.tags["1"]["replaced_by"] == "2" and registry.tags["1"]["replaced_at"]


@pytest.mark.parametrize(
    "dies_at",
    [
        ("set_model_version_tag", 1),  # tagging the challenger, before the alias moves
        ("set_registered_model_alias", 1),  # tagged, the alias not moved
        ("set_model_version_tag", 4),  # the alias moved, champion_since not written
        ("set_model_version_tag", 5),  # champion_since written, the old champion not marked replaced
        ("set_model_version_tag", 6),  # replaced_at written on the old champion, replaced_by not
    ],
    ids=["tagging", "moving", "after-move", "marking-replaced", "replaced-by"],
)
def test_a_promotion_killed_anywhere_is_completed_by_its_retry(registry, dies_at):
    registry.die_at = dies_at
    with pytest.raises(Killed):
        promote_and_import(DECISION, request="run-1")
    retried = promote_and_import(DECISION, request="run-1")
    assert retried["version"] == "2" and retried["previous_version"] == "1"
    assert_one_champion(registry)


def test_a_retry_after_a_complete_promotion_writes_nothing(registry):
    promote_and_import(DECISION, request="run-1")
    writes = len(registry.calls)
    promote_and_import(DECISION, request="run-1")
    assert len(registry.calls) == writes
    assert_one_champion(registry)


@pytest.mark.parametrize("dies_at", [4, 5, 6, 7, 8], ids=lambda n: f"tag-{n}")
def test_a_rollback_killed_after_the_move_is_completed_by_its_retry(registry, monkeypatch, dies_at):
    """Back to v1, which reigned before: its old champion_since is renewed, v2 is marked replaced."""
    promote_and_import(DECISION, request="run-1")
    monkeypatch.setattr(champion_module, "utc_now", iter(f"t{n}" for n in range(10, 99)).__next__)
    monkeypatch.setattr(champion_module, "existing_versions", lambda client: ["1", "2"])
    # 5 rollback tags go on v1 before the alias moves; the kill lands after it (tags 6-8) or before (4-5).
    registry.die_at = ("set_model_version_tag", registry.calls.count("set_model_version_tag") + dies_at)
    with pytest.raises(Killed):
        rollback_champion(None, by="ops", reason="bad month", request="rollback-1")
    rollback_champion(None, by="ops", reason="bad month", request="rollback-1")
    assert registry.aliases == {"champion": "1"}
    assert registry.tags["1"]["champion_since"] > registry.tags["1"]["rollback_at"]
    assert (
        registry.tags["2"]["replaced_by"] == "1"
        and registry.tags["2"]["replaced_at"] > registry.tags["1"]["rollback_at"]
    )
