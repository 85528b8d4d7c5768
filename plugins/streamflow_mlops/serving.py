"""Request logic of the churn service: feature reads, the champion holder, scoring, the prediction log.

The BentoML service (bentos/churn_service/service.py) is a thin shell over these pieces, so each
of them can be tested without HTTP. Requests never touch MLflow or Postgres: the champion is polled
and swapped off the request path, and predictions are logged by a background thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from streamflow_mlops.registry import bento_tag
from streamflow_mlops.schema import ENTITY
from streamflow_mlops.settings import CHAMPION_ALIAS, FEATURE_SERVICE, REGISTERED_MODEL, WAREHOUSE_SCHEMA, Settings

logger = logging.getLogger(__name__)

# A batch request is answered in one feature read and one model call; 500 ids keep that under a few
# tens of milliseconds, so one caller can't hold a worker long enough to starve the others.
MAX_BATCH_IDS = 500
# Single /predict calls coalesced into one model call: past ~64 the per-batch cost stops shrinking.
MAX_COALESCED = 64
# A request waits at most this long for its batch; past it the answer is a 503, never a hang.
REQUEST_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 10.0
# How long a request waits for a starting worker's first champion (loading one takes a few seconds).
FIRST_LOAD_WAIT_S = 8.0


class ServingError(Exception):
    """A request that can't be answered with a prediction; carries its HTTP status and JSON body."""

    status = 500

    def body(self) -> dict[str, Any]:
        raise NotImplementedError


class UnknownUser(ServingError):
    status = 404

    def __init__(self, user_id: str) -> None:
        super().__init__(f"unknown user {user_id}")
        self.user_id = user_id

    def body(self) -> dict[str, Any]:
        return {"error": "unknown_user", "user_id": self.user_id}


class MissingFeatures(ServingError):
    status = 422

    def __init__(self, user_id: str, missing: Sequence[str]) -> None:
        super().__init__(f"user {user_id} lacks features {list(missing)}")
        self.user_id = user_id
        self.missing = list(missing)

    def body(self) -> dict[str, Any]:
        return {"error": "missing_features", "user_id": self.user_id, "missing": self.missing}


class Unavailable(ServingError):
    """The model or the feature store can't answer right now (503); the client may retry."""

    status = 503

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what}: {detail}")
        self.what = what
        self.detail = detail

    def body(self) -> dict[str, Any]:
        return {"error": f"{self.what}_unavailable", "detail": self.detail}


# ---------------------------------------------------------------------------------------------
# Online features
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureRef:
    """One feature of a FeatureService: the feature view it lives in and its name."""

    view: str
    name: str


FeatureRows = dict[str, dict[str, Any]]


class OnlineFeatureReader(Protocol):
    """Reads the online features of a FeatureService; a missing value (or a whole unknown user) is None."""

    def feature_refs(self, feature_service: str) -> tuple[FeatureRef, ...]: ...

    def read(self, user_ids: Sequence[str], feature_service: str) -> FeatureRows: ...


class FeastSdkReader:
    """The reference path: `features.online_features` (Feast's own SDK read), for any online store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def feature_refs(self, feature_service: str) -> tuple[FeatureRef, ...]:
        from streamflow_mlops.features import feature_service as registered_service

        try:
            service = registered_service(feature_service, self.settings)
        except Exception as exc:  # registry down or service unknown: either way it can't be served
            raise Unavailable("feature_store", f"feature service {feature_service}: {exc}") from exc
        return tuple(
            FeatureRef(projection.name_to_use(), feature.name)
            for projection in service.feature_view_projections
            for feature in projection.features
        )

    def read(self, user_ids: Sequence[str], feature_service: str) -> FeatureRows:
        from streamflow_mlops.features import online_features

        try:
            lookup = online_features(user_ids, feature_service, self.settings)
        except Exception as exc:
            raise Unavailable("feature_store", str(exc)) from exc
        nothing = dict.fromkeys(lookup.feature_names)
        return {user_id: dict(lookup.values.get(user_id, nothing)) for user_id in user_ids}


class SqliteOnlineReader:
    """Fast path for Feast's sqlite online store: one query per batch over the service's view tables.

    It decodes rows with Feast's own key and value codecs, resolves the FeatureService through the
    Feast registry (cached per service), and is checked against `FeastSdkReader` by a parity test.
    """

    def __init__(self, path: str | Path, project: str, resolver: FeastSdkReader) -> None:
        self.path = str(path)
        self.project = project
        self.resolver = resolver
        self._refs: dict[str, tuple[FeatureRef, ...]] = {}
        self._local = threading.local()

    def feature_refs(self, feature_service: str) -> tuple[FeatureRef, ...]:
        refs = self._refs.get(feature_service)
        if refs is None:
            refs = self._refs[feature_service] = self.resolver.feature_refs(feature_service)
        return refs

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # Read-only: a missing file is an error here, never a new empty store.
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0, check_same_thread=False)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def read(self, user_ids: Sequence[str], feature_service: str) -> FeatureRows:
        from feast.protos.feast.types.Value_pb2 import Value as ValueProto
        from feast.type_map import feast_value_type_to_python_type

        refs = self.feature_refs(feature_service)
        keys = {entity_key_bytes(user_id): user_id for user_id in user_ids}
        by_view: dict[str, list[str]] = {}
        for ref in refs:
            by_view.setdefault(ref.view, []).append(ref.name)
        key_marks = ",".join("?" * len(keys))
        selects, params = [], []
        for view, names in by_view.items():
            table = f"{self.project}_{view}".replace('"', '""')
            selects.append(
                f'SELECT entity_key, feature_name, value FROM "{table}" '
                f"WHERE entity_key IN ({key_marks}) AND feature_name IN ({','.join('?' * len(names))})"
            )
            params.extend(keys)
            params.extend(names)
        try:
            rows = self._connection().execute(" UNION ALL ".join(selects), params).fetchall()
        except sqlite3.Error as exc:
            self._drop_connection()
            raise Unavailable("feature_store", f"online store {self.path}: {exc}") from exc
        answer: FeatureRows = {user_id: dict.fromkeys(ref.name for ref in refs) for user_id in user_ids}
        for key, name, blob in rows:
            answer[keys[key]][name] = feast_value_type_to_python_type(ValueProto.FromString(blob))
        return answer


def entity_key_bytes(user_id: str) -> bytes:
    """The sqlite online store's key for a user, as Feast serializes it (key serialization v3)."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    key = EntityKey(join_keys=[ENTITY], entity_values=[Value(string_val=user_id)])
    return serialize_entity_key(key, entity_key_serialization_version=3)


def build_reader(settings: Settings) -> OnlineFeatureReader:
    """The fastest reader for the configured online store, with the Feast SDK as the fallback."""
    from streamflow_mlops.features import feature_store

    sdk = FeastSdkReader(settings)
    store = feature_store(settings)
    online = store.config.online_store
    if getattr(online, "type", None) == "sqlite" and store.config.entity_key_serialization_version == 3:
        path = Path(online.path)
        if not path.is_absolute():
            path = Path(store.repo_path) / path
        return SqliteOnlineReader(path, store.project, sdk)
    return sdk


def split_lookup(user_id: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The user's features, or the error the lookup means: nothing at all is an unknown user."""
    missing = [name for name, value in values.items() if value is None]
    if len(missing) == len(values):
        raise UnknownUser(user_id)
    if missing:
        raise MissingFeatures(user_id, missing)
    return dict(values)


# ---------------------------------------------------------------------------------------------
# The champion and its hot swap
# ---------------------------------------------------------------------------------------------


class ProbabilityModel(Protocol):
    def predict_proba(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray: ...


class PipelineModel:
    """An sklearn pipeline scored on plain dict rows, single-threaded.

    When the pipeline has a shape `compile_pipeline` knows, rows go through its numpy-only
    equivalent (`fast`); otherwise, or when that equivalent disagrees with the pipeline on a
    check rows (`verify`), through one DataFrame per batch and the pipeline itself.
    """

    def __init__(self, pipeline: Any, columns: Sequence[str]) -> None:
        self.pipeline = pipeline
        self.columns = list(columns)
        # Thread pools inside one request cost more than they give on a single row (57 ms vs 29 ms
        # for a 300-tree forest), and the service already runs requests side by side.
        single_threaded = {name: 1 for name in pipeline.get_params(deep=True) if name.endswith("n_jobs")}
        if single_threaded:
            pipeline.set_params(**single_threaded)
        self.fast = compile_pipeline(pipeline)

    def verify(self, rows: Sequence[Mapping[str, Any]]) -> bool:
        """Keep the fast path only if it gives the pipeline's probabilities bit for bit on `rows`."""
        if self.fast is None:
            return False
        expected = self.frame_predict_proba(rows)
        try:
            same = bool(np.array_equal(self.fast.predict_proba(rows), expected))
        except Exception:
            logger.warning("array scoring failed on check rows; scoring through the pipeline", exc_info=True)
            same = False
        if not same:
            logger.warning("array scoring differs from the pipeline on check rows; scoring through the pipeline")
            self.fast = None
        return same

    def frame_predict_proba(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        import pandas as pd

        frame = pd.DataFrame({column: [row[column] for row in rows] for column in self.columns})
        return self.pipeline.predict_proba(frame)[:, 1]

    def predict_proba(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        if self.fast is not None:
            return self.fast.predict_proba(rows)
        return self.frame_predict_proba(rows)


ArrayStep = Callable[["np.ndarray"], "np.ndarray"]


@dataclass(frozen=True)
class ArrayBranch:
    """One ColumnTransformer branch as array code: its input columns, how rows become its input, its steps."""

    columns: tuple[str, ...]
    encode: Callable[[Sequence[Mapping[str, Any]], tuple[str, ...]], np.ndarray]
    steps: tuple[ArrayStep, ...]

    def transform(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        values = self.encode(rows, self.columns)
        for step in self.steps:
            values = step(values)
        return values


@dataclass(frozen=True)
class ArrayPipeline:
    """A fitted `Pipeline(ColumnTransformer, ..., classifier)` scored from dict rows with numpy only.

    sklearn's ColumnTransformer costs about 2 ms on a one-row DataFrame (DataFrame build, column
    selection, validation and joblib dispatch per branch); the same encoding as arrays costs tens
    of microseconds. Imputer, scaler and one-hot steps are rewritten with the same float
    operations, any other step's own fitted `transform` runs on the array, and the fitted
    classifier scores the result, so the probabilities are the pipeline's own.
    """

    branches: tuple[ArrayBranch, ...]
    steps: tuple[ArrayStep, ...]
    classifier: Any
    scores: Callable[[np.ndarray], np.ndarray]

    def transform(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        values = np.hstack([branch.transform(rows) for branch in self.branches])
        for step in self.steps:
            values = step(values)
        return values

    def predict_proba(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self.scores(self.transform(rows))


def float_rows(rows: Sequence[Mapping[str, Any]], columns: tuple[str, ...]) -> np.ndarray:
    # None becomes NaN, as in the DataFrame the pipeline would have seen.
    return np.array([[row[column] for column in columns] for row in rows], dtype=np.float64)


def one_hot_rows(encoder: Any) -> Callable[[Sequence[Mapping[str, Any]], tuple[str, ...]], np.ndarray] | None:
    """A fitted OneHotEncoder (no drop, no infrequent grouping) as dict lookups, else None."""
    if getattr(encoder, "drop_idx_", None) is not None or getattr(encoder, "_infrequent_enabled", False):
        return None
    positions: list[dict[Any, int]] = []
    offset = 0
    for categories in encoder.categories_:
        values = categories.tolist()
        # NaN/None categories don't compare equal to themselves in a dict; leave them to sklearn.
        if any(value is None or value != value for value in values):
            return None
        positions.append({value: offset + index for index, value in enumerate(values)})
        offset += len(values)
    width, dtype, strict = offset, encoder.dtype, encoder.handle_unknown == "error"

    def encode(rows: Sequence[Mapping[str, Any]], columns: tuple[str, ...]) -> np.ndarray:
        out = np.zeros((len(rows), width), dtype=dtype)
        for i, row in enumerate(rows):
            for lookup, column in zip(positions, columns, strict=True):
                j = lookup.get(row[column])
                if j is not None:
                    out[i, j] = 1
                elif strict:
                    raise ValueError(f"unknown category {row[column]!r} in {column}")
        return out

    return encode


def array_step(step: Any) -> ArrayStep:
    """A fitted array-in, array-out step: imputer and scaler as numpy, anything else its own transform."""
    import copy

    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    if isinstance(step, SimpleImputer):
        missing = step.missing_values
        statistics = step.statistics_
        if isinstance(missing, float) and missing != missing and not step.add_indicator:
            if not np.isnan(statistics).any():
                return lambda values: np.where(np.isnan(values), statistics, values)
    if type(step) is StandardScaler:
        mean = step.mean_ if step.with_mean else None
        scale = step.scale_ if step.with_std else None

        def standardize(values: np.ndarray) -> np.ndarray:
            # The same two operations, in the same order, as StandardScaler.transform.
            if mean is not None:
                values = values - mean
            if scale is not None:
                values = values / scale
            return values

        return standardize
    spline = spline_step(step)
    if spline is not None:
        return spline
    if hasattr(step, "feature_names_in_"):
        # Fitted on a DataFrame: called on an array it would warn on every call; the names are
        # checked once here instead, by the caller's column order.
        step = copy.copy(step)
        del step.feature_names_in_
    return step.transform


def spline_step(step: Any) -> ArrayStep | None:
    """A fitted dense SplineTransformer with linear or constant extrapolation, else None.

    SplineTransformer.transform re-validates its input and re-evaluates every spline and its slope
    at both boundaries on each call (five scipy calls per feature); those boundary values are
    constants of the fitted splines, so they are evaluated once here, by the same calls, and each
    transform evaluates only the in-range splines and repeats sklearn's extrapolation arithmetic.
    """
    from sklearn.preprocessing import SplineTransformer

    if type(step) is not SplineTransformer or step.sparse_output or step.extrapolation not in ("linear", "constant"):
        return None
    if step.degree < 2:
        # sklearn bumps its loop's `degree` for linear extrapolation of degree <= 1 and the bump
        # carries into the next features' boundaries; left to sklearn rather than copied.
        return None
    degree, n_splines = step.degree, step.bsplines_[0].c.shape[1]
    n_out = step.n_features_out_ + len(step.bsplines_) * (1 - step.include_bias)
    kept = None if step.include_bias else [j for j in range(n_out) if (j + 1) % n_splines != 0]
    linear = step.extrapolation == "linear"
    splines = []
    for spl in step.bsplines_:
        xmin, xmax = spl.t[degree], spl.t[-degree - 1]
        slopes = (spl(xmin, nu=1), spl(xmax, nu=1)) if linear else (None, None)
        splines.append((spl, xmin, xmax, spl(xmin), spl(xmax), *slopes))
    allow_nan = step.handle_missing == "zeros"

    def transform(values: np.ndarray) -> np.ndarray:
        if not allow_nan and not np.isfinite(values).all():
            raise ValueError("Input X contains NaN or infinity.")
        out = np.zeros((values.shape[0], n_out), dtype=values.dtype, order=step.order)
        for i, (spl, xmin, xmax, f_min, f_max, fp_min, fp_max) in enumerate(splines):
            x = values[:, i]
            first = i * n_splines
            inside = (xmin <= x) & (x <= xmax)
            out[inside, first : first + n_splines] = spl(x[inside])
            below, above = x < xmin, x > xmax
            if not linear:
                if below.any():
                    out[below, first : first + degree] = f_min[:degree]
                if above.any():
                    out[above, first + n_splines - degree : first + n_splines] = f_max[-degree:]
                continue
            for j in range(degree):
                if below.any():
                    out[below, first + j] = f_min[j] + (x[below] - xmin) * fp_min[j]
                if above.any():
                    k = n_splines - 1 - j
                    out[above, first + k] = f_max[k] + (x[above] - xmax) * fp_max[k]
        return out if kept is None else out[:, kept]

    return transform


def classifier_scores(classifier: Any) -> Callable[[np.ndarray], np.ndarray]:
    """Positive-class probabilities of a fitted classifier on an encoded array.

    A binary LogisticRegression is its own formula (the products, sum and expit its
    predict_proba computes, without the input validation, half of its cost on one row);
    any other classifier is asked through its predict_proba.
    """
    from scipy.special import expit
    from sklearn.linear_model import LogisticRegression

    if type(classifier) is LogisticRegression and len(classifier.classes_) == 2:
        weights, intercept = classifier.coef_.T, classifier.intercept_

        def logistic(values: np.ndarray) -> np.ndarray:
            scores = values @ weights + intercept
            return expit(scores.reshape(-1))

        return logistic
    return lambda values: classifier.predict_proba(values)[:, 1]


def compile_pipeline(pipeline: Any) -> ArrayPipeline | None:
    """The numpy-only equivalent of a fitted `Pipeline(ColumnTransformer, ..., classifier)`, or None."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    steps = [step for _, step in getattr(pipeline, "steps", []) if step not in (None, "passthrough")]
    if len(steps) < 2 or not isinstance(steps[0], ColumnTransformer) or not hasattr(steps[-1], "predict_proba"):
        return None
    columns_transformer, classifier = steps[0], steps[-1]
    if getattr(classifier, "feature_names_in_", None) is not None or columns_transformer.sparse_output_:
        return None  # DataFrames (set_output) or sparse matrices handed along: not this shape
    names = list(getattr(columns_transformer, "feature_names_in_", []))
    branches = []
    for _, transformer, selection in columns_transformer.transformers_:
        selected = list(selection) if isinstance(selection, list | tuple | np.ndarray) else None
        if selected is None or any(isinstance(item, bool | np.bool_) for item in selected):
            return None
        if transformer == "drop" or not selected:
            continue
        columns = tuple(names[item] if isinstance(item, int | np.integer) else item for item in selected)
        if not all(isinstance(column, str) for column in columns):
            return None
        if transformer == "passthrough":
            branch_steps: list[Any] = []
        elif isinstance(transformer, Pipeline):
            branch_steps = [step for _, step in transformer.steps if step not in (None, "passthrough")]
        else:
            branch_steps = [transformer]
        encode: Callable[[Sequence[Mapping[str, Any]], tuple[str, ...]], np.ndarray] | None = float_rows
        if branch_steps and isinstance(branch_steps[0], OneHotEncoder):
            encode = one_hot_rows(branch_steps.pop(0))
            if encode is None:
                return None
        branches.append(ArrayBranch(columns, encode, tuple(array_step(step) for step in branch_steps)))
    if not branches:
        return None
    middle = tuple(array_step(step) for step in steps[1:-1])
    return ArrayPipeline(tuple(branches), middle, classifier, classifier_scores(classifier))


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
    threshold = float(merged.get("threshold", 0.5))
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold {threshold} outside (0, 1)")
    return version, threshold, str(merged.get("feature_service") or FEATURE_SERVICE)


def load_champion(tag: str) -> Champion:
    """Load an imported champion from the BentoML model store, as its raw sklearn pipeline when it is one."""
    import bentoml
    import mlflow.pyfunc
    import mlflow.sklearn

    bento_model = bentoml.models.get(tag)
    version, threshold, feature_service = champion_labels(bento_model.info.labels, bento_model.info.metadata)
    path = bento_model.path_of("mlflow_model")
    pyfunc = mlflow.pyfunc.load_model(path)
    schema = pyfunc.metadata.get_input_schema()
    if "sklearn" not in pyfunc.metadata.flavors or schema is None:
        raise ValueError(f"{tag} is not an sklearn model with an input schema")
    model = PipelineModel(mlflow.sklearn.load_model(path), schema.input_names())
    example = pyfunc.metadata.load_input_example(path)
    if model.fast is not None and example is not None:
        model.verify(example[model.columns].to_dict("records"))
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
    except NotFound:
        # What BentoML answers for a name never imported: a fresh stack before its first champion.
        return None
    if not models:
        return None
    return str(max(models, key=lambda model: model.info.creation_time).tag)


def champion_version_from_mlflow(tracking_uri: str) -> str:
    """The MLflow version the `champion` alias points at (raises when MLflow can't be reached)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return str(client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS).version)


class ChampionWatcher:
    """Polls for the champion off the request path and swaps the holder when it moves.

    The alias in MLflow is the truth; when MLflow can't be reached the current model stays, and a
    service that has none yet starts on the newest imported model so it can answer at all.
    """

    def __init__(
        self,
        holder: ModelHolder,
        champion_version: Callable[[], str],
        load: Callable[[str], Champion] = load_champion,
    ) -> None:
        self.holder = holder
        self.champion_version = champion_version
        self.load = load
        self.last_error: str | None = None

    def wanted_tag(self) -> str | None:
        try:
            tag = bento_tag(self.champion_version())
            self.last_error = None
            return tag
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


# ---------------------------------------------------------------------------------------------
# The prediction log
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogRow:
    predicted_at: datetime
    user_id: str
    features: Mapping[str, Any]
    churn_probability: float
    model_name: str
    model_version: str


class PredictionLogWriter:
    """Writes `prediction_log` in batches from a background thread; never blocks or fails a request.

    Rows wait in a bounded queue; when it is full, or a flush fails, the rows are dropped and
    counted (`dropped`, logged as a warning), and the next flush reconnects.
    """

    def __init__(
        self,
        db_url: str,
        max_queue: int = 50_000,
        batch_rows: int = 2_000,
        flush_interval_s: float = 1.0,
    ) -> None:
        self.db_url = db_url
        self.batch_rows = batch_rows
        self.flush_interval_s = flush_interval_s
        self.written = 0
        self.dropped = 0
        self._queue: queue.Queue[LogRow] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self._count_lock = threading.Lock()
        self._dropped_reported = 0

    def submit(self, rows: Sequence[LogRow]) -> None:
        for row in rows:
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                self._count_dropped(1)

    def _count_dropped(self, n: int) -> None:
        with self._count_lock:
            self.dropped += n

    def _take_batch(self, wait_s: float) -> list[LogRow]:
        batch: list[LogRow] = []
        try:
            batch.append(self._queue.get(timeout=wait_s))
        except queue.Empty:
            return batch
        while len(batch) < self.batch_rows:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: Sequence[LogRow]) -> None:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.db_url, connect_timeout=3, autocommit=False)
        conn = self._conn
        columns = "predicted_at, user_id, features, churn_probability, model_name, model_version"
        with conn.cursor() as cur:
            with cur.copy(f"COPY {WAREHOUSE_SCHEMA}.prediction_log ({columns}) FROM STDIN") as copy:
                for row in batch:
                    copy.write_row(
                        (
                            row.predicted_at,
                            row.user_id,
                            json.dumps(row.features, default=str),
                            row.churn_probability,
                            row.model_name,
                            row.model_version,
                        )
                    )
        conn.commit()

    def flush(self, batch: Sequence[LogRow]) -> bool:
        """Write one batch; on failure drop it, count it and forget the connection."""
        if not batch:
            return True
        try:
            self._write(batch)
        except Exception as exc:
            self._count_dropped(len(batch))
            logger.warning("prediction log: dropped %d rows (%d in total): %s", len(batch), self.dropped, exc)
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:
                    logger.debug("closing a broken log connection failed", exc_info=True)
            self._conn = None
            return False
        self.written += len(batch)
        return True

    def drain(self) -> None:
        """Write everything queued now (used at shutdown and by tests)."""
        while batch := self._take_batch(0.0):
            self.flush(batch)

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            ok = self.flush(self._take_batch(self.flush_interval_s))
            if self.dropped != self._dropped_reported and self._queue.empty():
                self._dropped_reported = self.dropped
                logger.warning("prediction log: %d rows dropped since start", self.dropped)
            # After a failure wait a little before reconnecting, so a down database isn't hammered.
            backoff = 0.0 if ok else min(5.0, max(0.5, backoff * 2))
            if backoff:
                self._stop.wait(backoff)
        self.drain()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def answer(user_id: str, probability: float, champion: Champion, features: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON answer of one prediction (DESIGN "Service")."""
    return {
        "user_id": user_id,
        "churn_probability": probability,
        "churn": probability >= champion.threshold,
        "threshold": champion.threshold,
        "model": {"name": champion.name, "version": champion.version},
        "features": dict(features),
    }


@dataclass
class ChurnScorer:
    """Scores a batch of user ids against the current champion: one feature read, one model call."""

    holder: ModelHolder
    reader: OnlineFeatureReader
    log: PredictionLogWriter | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def require_champion(self) -> Champion:
        champion = self.holder.champion
        if champion is None:
            # A worker that just started takes requests while its first champion loads (several
            # workers share one port and /readyz answers from one of them): wait rather than 503.
            champion = self.holder.wait_for_first(FIRST_LOAD_WAIT_S)
        if champion is None:
            raise Unavailable("model", "no champion loaded yet")
        return champion

    def score(self, user_ids: Sequence[str]) -> list[dict[str, Any] | ServingError]:
        """One answer or one error per id, in order; the whole call raises Unavailable (503)."""
        champion = self.require_champion()
        unique = list(dict.fromkeys(user_ids))
        rows = self.reader.read(unique, champion.feature_service)
        outcomes: dict[str, dict[str, Any] | ServingError] = {}
        scored: list[tuple[str, dict[str, Any]]] = []
        for user_id in unique:
            try:
                scored.append((user_id, split_lookup(user_id, rows[user_id])))
            except ServingError as exc:
                outcomes[user_id] = exc
        if scored:
            try:
                probabilities = champion.model.predict_proba([features for _, features in scored])
            except Exception as exc:
                logger.exception("model %s failed on a batch of %d", champion.tag, len(scored))
                raise Unavailable("model", f"{champion.tag} failed: {exc}") from exc
            now = self.clock()
            log_rows = []
            for (user_id, features), probability in zip(scored, probabilities, strict=True):
                outcomes[user_id] = answer(user_id, float(probability), champion, features)
                log_rows.append(LogRow(now, user_id, features, float(probability), champion.name, champion.version))
            if self.log is not None:
                self.log.submit(log_rows)
        return [outcomes[user_id] for user_id in user_ids]

    def features(self, user_id: str) -> dict[str, Any]:
        """The online features of the champion's FeatureService (the default service before one loads)."""
        champion = self.holder.champion
        feature_service = champion.feature_service if champion else FEATURE_SERVICE
        values = split_lookup(user_id, self.reader.read([user_id], feature_service)[user_id])
        return {"user_id": user_id, "feature_service": feature_service, "features": values}


class MicroBatcher:
    """Coalesces concurrent single-id requests into one `ChurnScorer.score` call in a worker thread.

    No timer: while one batch is scored, new requests queue up and form the next batch, so a lone
    request pays no wait and a busy service scores many ids per model call.
    """

    def __init__(
        self,
        score: Callable[[list[str]], list[dict[str, Any] | ServingError]],
        max_batch: int = MAX_COALESCED,
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.score = score
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self.batches = 0
        self.items = 0
        self._queue: asyncio.Queue[tuple[str, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")

    async def submit(self, user_id: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._consume())
        future: asyncio.Future = loop.create_future()
        await self._queue.put((user_id, future))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except TimeoutError as exc:
            raise Unavailable("model", f"no answer within {self.timeout_s:.0f}s") from exc

    async def _consume(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            ids = [user_id for user_id, _ in batch]
            try:
                outcomes: list[Any] = await loop.run_in_executor(self._executor, self.score, ids)
            except Exception as exc:
                outcomes = [exc] * len(batch)
            self.batches += 1
            self.items += len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


def mlflow_champion_version(settings: Settings) -> Callable[[], str]:
    """A `champion_version` callable for ChampionWatcher bound to the settings' MLflow."""
    uri = settings.mlflow_tracking_uri
    return lambda: champion_version_from_mlflow(uri)


# A /predict_batch of MAX_BATCH_IDS ids is about 10 KB of JSON; 64 KB leaves room and stops a
# client from making the worker parse megabytes.
MAX_BODY_BYTES = 64 * 1024


class BodySizeLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 400 before the app parses it."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Callable[[dict[str, Any]], Any]) -> None:
        body = json.dumps({"error": "request_too_large", "max_bytes": self.max_bytes}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_bytes:
                await self._reject(send)
                return
            await self.app(scope, receive, send)
            return
        # No declared length (chunked): read at most max_bytes, then replay it to the app.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._reject(send)
                return
        replayed = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return replayed
            return await receive()

        await self.app(scope, replay, send)


class ServiceRuntime:
    """What one service worker runs: the champion holder, the reader, the scorer and their threads.

    A background thread builds the feature reader (retrying while the registry is down) and polls
    the champion every `poll_interval_s`; requests only read what it prepared.
    """

    def __init__(
        self,
        settings: Settings,
        champion_version: Callable[[], str] | None = None,
        poll_interval_s: float = POLL_INTERVAL_S,
        reader_factory: Callable[[Settings], OnlineFeatureReader] = build_reader,
        log_writer: PredictionLogWriter | None = None,
    ) -> None:
        self.settings = settings
        self.poll_interval_s = poll_interval_s
        self.reader_factory = reader_factory
        self.holder = ModelHolder()
        self.watcher = ChampionWatcher(self.holder, champion_version or mlflow_champion_version(settings))
        self.log = log_writer if log_writer is not None else PredictionLogWriter(settings.db_url)
        self.reader: OnlineFeatureReader | None = None
        self.scorer = ChurnScorer(self.holder, _RuntimeReader(self), self.log)
        self.batcher = MicroBatcher(self.scorer.score)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def require_reader(self) -> OnlineFeatureReader:
        if self.reader is None:
            try:
                self.reader = self.reader_factory(self.settings)
            except Exception as exc:
                raise Unavailable("feature_store", f"cannot open the feature store: {exc}") from exc
        return self.reader

    def poll(self) -> None:
        """One round of the background work: open the store, follow the champion, warm its features."""
        try:
            reader = self.require_reader()
        except Unavailable as exc:
            logger.warning("%s", exc)
            return
        self.watcher.poll_once()
        champion = self.holder.champion
        if champion is not None:
            try:
                reader.feature_refs(champion.feature_service)
            except Unavailable as exc:
                logger.warning("%s", exc)

    def ready(self) -> bool:
        """A champion is loaded and the store knows its FeatureService."""
        champion = self.holder.champion
        if champion is None or self.reader is None:
            return False
        try:
            return bool(self.reader.feature_refs(champion.feature_service))
        except Unavailable:
            return False

    def _run(self) -> None:
        settled = False
        while not settled or not self._stop.wait(self.poll_interval_s):
            try:
                self.poll()
            except Exception:
                # Whatever one round hits (MLflow, BentoML, the store), the next may not: a dead
                # thread would never load a champion again and the worker would stay unready.
                logger.exception("champion watcher: poll failed, next try in %.0f s", self.poll_interval_s)
            if not settled:
                self.holder.settle()
                settled = True

    def start(self) -> None:
        self.log.start()
        self.holder.loading()
        self._thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.batcher.close()
        self.log.stop()


class _RuntimeReader:
    """The runtime's reader as the scorer sees it: opened on first use, 503 while it can't be."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime

    def feature_refs(self, feature_service: str) -> tuple[FeatureRef, ...]:
        return self.runtime.require_reader().feature_refs(feature_service)

    def read(self, user_ids: Sequence[str], feature_service: str) -> FeatureRows:
        return self.runtime.require_reader().read(user_ids, feature_service)
