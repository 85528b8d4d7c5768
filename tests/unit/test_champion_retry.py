"""A promotion or rollback retried after its process died part-way (tests/faults, fault 2, in
miniature): the retry ends with one champion whose tags agree with the alias, whatever step the
first try reached.

A real MLflow registry (sqlite backend in a temp dir); the process "dies" at the n-th registry write
through a thin proxy of the client. Only the BentoML import is stubbed (it needs a logged model)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from streamflow_mlops.config.settings import CHAMPION_ALIAS, REGISTERED_MODEL
from streamflow_mlops.pipelines import champion as champion_module
from streamflow_mlops.pipelines.champion import promote_and_import, rollback_champion


class Killed(BaseException):
    """The process dying at a given registry write (BaseException: nothing in the library catches it)."""


# A real MLflow registry per case: ~2 s each, so make test runs these, not make test-fast.
pytestmark = pytest.mark.slow

WRITES = ("set_model_version_tag", "set_registered_model_alias")


class Registry:
    """A real MlflowClient whose writes are counted; `die_at` (write name, n) raises Killed at the
    n-th such write, once. Reads and everything else go straight to MLflow."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client
        self.calls: list[str] = []
        self.die_at: tuple[str, int] | None = None

    def __getattr__(self, name: str):
        method = getattr(self.client, name)
        if name not in WRITES:
            return method

        def write(*args, **kwargs):
            self.calls.append(name)
            if self.die_at and self.die_at[0] == name and self.calls.count(name) == self.die_at[1]:
                self.die_at = None
                raise Killed(name)
            return method(*args, **kwargs)

        return write

    @property
    def tags(self) -> dict[str, dict[str, str]]:
        versions = self.client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
        return {str(v.version): dict(v.tags) for v in versions}

    @property
    def aliases(self) -> dict[str, str]:
        return {
            alias: str(version) for alias, version in self.client.get_registered_model(REGISTERED_MODEL).aliases.items()
        }

    def promoted_not_replaced(self) -> list[str]:
        """Versions whose tags say they are the champion: promoted (or rolled back to) and not replaced."""
        return sorted(v for v, t in self.tags.items() if t.get("decision") == "promoted" and not t.get("replaced_by"))


MONTH = {"month": "month_001", "as_of": "2024-02-29"}


@pytest.fixture
def registry(monkeypatch, tmp_path) -> Registry:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # not a registry URI an earlier test set
    client.create_registered_model(REGISTERED_MODEL)
    tags = [
        {"month": "month_000", "as_of": "2024-01-31", "decision": "promoted", "champion_since": "t0"},
        {**MONTH, "decision": "promote"},
    ]
    for version_tags in tags:
        client.create_model_version(REGISTERED_MODEL, source=str(tmp_path / "model"), tags=version_tags)
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, "1")
    registry = Registry(client)
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
