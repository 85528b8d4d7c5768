"""The served champion: loading it from the BentoML store, holding it, and swapping in a newly promoted one."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from streamflow_mlops.config.settings import CHAMPION_ALIAS, REGISTERED_MODEL, Settings
from streamflow_mlops.model.compiled import PipelineModel, ProbabilityModel
from streamflow_mlops.model.registry import RegisteredVersion, aliased_version, bento_tag, mlflow_client

logger = logging.getLogger(__name__)


POLL_INTERVAL_S = 10.0


# How long a request waits for a starting worker's first champion (loading one takes a few seconds).
FIRST_LOAD_WAIT_S = 8.0


@dataclass(frozen=True)
class Champion:
    """Everything a request needs from the current model, swapped as one reference."""

    name: str
    version: str
    tag: str
    threshold: float
    feature_service: str
    model: ProbabilityModel


def champion_labels(labels: Mapping[str, str], metadata: Mapping[str, Any]) -> tuple[str, float, str]:
    """(MLflow version, decision threshold, feature service) from an imported model's labels/metadata."""
    # Labels are strings and may be empty; metadata keeps typed values and wins when both are set.
    merged = {**{k: v for k, v in labels.items() if v != ""}, **metadata}
    version = str(merged.get("mlflow_version", "")).strip()
    if not version:
        raise ValueError("model lacks the mlflow_version label")
    registered = RegisteredVersion.from_tags(version, merged)
    return version, checked_threshold(registered.threshold), registered.feature_service


def checked_threshold(threshold: float) -> float:
    """A served model's decision threshold, refused outside (0, 1)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold {threshold} outside (0, 1)")
    return threshold


def pipeline_model(path: str, source: str) -> PipelineModel:
    """The sklearn pipeline of a local MLflow model folder, scored on dict rows (its fast path kept
    only if it matches the pipeline on the logged input example)."""
    import mlflow.pyfunc
    import mlflow.sklearn

    pyfunc = mlflow.pyfunc.load_model(path)
    schema = pyfunc.metadata.get_input_schema()
    if "sklearn" not in pyfunc.metadata.flavors or schema is None:
        raise ValueError(f"{source} is not an sklearn model with an input schema")
    model = PipelineModel(mlflow.sklearn.load_model(path), schema.input_names())
    example = pyfunc.metadata.load_input_example(path)
    if model.fast is not None and example is not None:
        model.verify(example[model.columns].to_dict("records"))
    return model


def load_champion(tag: str) -> Champion:
    """Load an imported champion from the BentoML model store, as its raw sklearn pipeline when it is one."""
    import bentoml

    bento_model = bentoml.models.get(tag)
    version, threshold, feature_service = champion_labels(bento_model.info.labels, bento_model.info.metadata)
    model = pipeline_model(bento_model.path_of("mlflow_model"), tag)
    return Champion(
        name=REGISTERED_MODEL,
        version=version,
        tag=str(bento_model.tag),
        threshold=threshold,
        feature_service=feature_service,
        model=model,
    )


class ModelHolder:
    """The current champion behind one reference: readers take it once per batch, a swap is atomic."""

    def __init__(self) -> None:
        self._champion: Champion | None = None
        self._lock = threading.Lock()
        self._settled = threading.Event()
        self._settled.set()

    @property
    def champion(self) -> Champion | None:
        return self._champion

    def swap(self, champion: Champion) -> Champion | None:
        with self._lock:
            previous, self._champion = self._champion, champion
        self._settled.set()
        return previous

    def loading(self) -> None:
        """A first champion is being loaded: `wait_for_first` waits for it."""
        self._settled.clear()

    def settle(self) -> None:
        """The first load attempt is over (with or without a champion): nobody waits any more."""
        self._settled.set()

    def wait_for_first(self, timeout_s: float) -> Champion | None:
        self._settled.wait(timeout_s)
        return self._champion


def newest_imported_tag() -> str | None:
    """The most recently imported `streamflow_churn` model in the BentoML store, if any."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        models = bentoml.models.list(REGISTERED_MODEL)
    except NotFound:  # BentoML raises rather than return [] before the first import of a name
        return None
    if not models:
        return None
    return str(max(models, key=lambda model: model.info.creation_time).tag)


def aliased_version_from_mlflow(tracking_uri: str, alias: str) -> str | None:
    """The MLflow version `alias` points at, None while it points nowhere (raises when MLflow can't
    be reached)."""
    version = aliased_version(mlflow_client(tracking_uri), alias)
    return None if version is None else str(version.version)


def champion_version_from_mlflow(tracking_uri: str) -> str | None:
    """The MLflow version the `champion` alias points at, None before the first promotion."""
    return aliased_version_from_mlflow(tracking_uri, CHAMPION_ALIAS)


class ChampionWatcher:
    """Polls for the champion off the request path and swaps the holder when it moves.

    The alias in MLflow is the truth; when MLflow can't be reached the current model stays, and a
    service that has none yet starts on the newest imported model so it can answer at all.
    """

    def __init__(
        self,
        holder: ModelHolder,
        read_champion_version: Callable[[], str | None],
        load: Callable[[str], Champion] = load_champion,
    ) -> None:
        self.holder = holder
        self.read_champion_version = read_champion_version
        self.load = load
        self.last_error: str | None = None

    def wanted_tag(self) -> str | None:
        try:
            version = self.read_champion_version()
            self.last_error = None
            if version is None:  # nothing promoted yet: serve what the store has, if anything
                return None if self.holder.champion else newest_imported_tag()
            return bento_tag(version)
        except Exception as exc:
            self.last_error = f"champion lookup failed: {exc}"
            logger.warning("%s", self.last_error)
            return None if self.holder.champion else newest_imported_tag()

    def poll_once(self) -> bool:
        """Swap to the champion when it differs from the current model; True when a swap happened."""
        tag = self.wanted_tag()
        current = self.holder.champion
        if tag is None or (current is not None and current.tag == tag):
            return False
        try:
            champion = self.load(tag)
        except Exception as exc:
            self.last_error = f"loading {tag} failed: {exc}"
            logger.warning("%s", self.last_error)
            return False
        previous = self.holder.swap(champion)
        logger.info("champion %s -> %s", previous.tag if previous else None, champion.tag)
        return True


def mlflow_champion_version(settings: Settings) -> Callable[[], str | None]:
    """A `read_champion_version` callable for ChampionWatcher bound to the settings' MLflow."""
    uri = settings.mlflow_tracking_uri
    return lambda: champion_version_from_mlflow(uri)
