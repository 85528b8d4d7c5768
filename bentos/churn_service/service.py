"""StreamFlow churn service: the champion model scored on features read from the Feast online store.

Thin HTTP shell over `streamflow_mlops.serving.runtime` (request logic, champion hot swap, prediction log).
Routes and errors (docs/architecture.md, "Service"): 404 unknown user, 422 missing features, 400 malformed
or oversize input, 503 while the model or the feature store can't answer.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Annotated, Any

# One OpenMP/BLAS thread per worker, set before numpy or sklearn load their runtimes: requests
# already run side by side, and on a small machine a model's thread team spinning at its
# barriers costs more than it gives on a few rows (an operator's own setting wins).
for _threads_var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_threads_var, "1")
# The feature repo (feature_store.yaml) sits two folders up from this file, in the repository and in
# a built bento's src/ alike; an installed library can't know where that is (STREAMFLOW_REPO wins).
os.environ.setdefault("STREAMFLOW_REPO", str(Path(__file__).resolve().parents[2]))
# BentoML 1.4 reads `model_fields` off each request's input model, a pydantic 2.11 deprecation:
# printed again whenever a library resets the warning registry, it wrote a log line every few requests.
warnings.filterwarnings("ignore", message="Accessing the 'model_fields' attribute on the instance")

import bentoml  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402

from streamflow_mlops.config.schema import USER_ID_REGEX  # noqa: E402
from streamflow_mlops.config.settings import get_settings  # noqa: E402
from streamflow_mlops.extensions import bentoml as bentoml_extension  # noqa: E402
from streamflow_mlops.serving.errors import ServingError  # noqa: E402
from streamflow_mlops.serving.heap import GcPauses, settle_heap  # noqa: E402
from streamflow_mlops.serving.http import MAX_BODY_BYTES, BodySizeLimit, JsonBodyOnly  # noqa: E402
from streamflow_mlops.serving.runtime import ServiceRuntime, worker_count  # noqa: E402
from streamflow_mlops.serving.scoring import MAX_BATCH_IDS  # noqa: E402

UserId = Annotated[
    str, Field(pattern=USER_ID_REGEX, max_length=32, description="Telco-style user id", examples=["7590-VHVEG"])
]


class ModelRef(BaseModel):
    name: str
    version: str


class Reason(BaseModel):
    """One feature raising this user's risk: its value and its exact share of the logit."""

    feature: str
    value: Any
    contribution: float


class Prediction(BaseModel):
    user_id: str
    churn_probability: float
    churn: bool
    threshold: float
    model: ModelRef
    features: dict[str, Any]
    reasons: list[Reason] = Field(
        description="Top 3 features raising the risk, largest first (exact logit shares; empty for tree models)"
    )


API_ROUTES = ["/predict", "/predict_batch", "/features"]

WORKERS = worker_count(get_settings())


# What `/` (the Swagger page) and `/docs.json` (`info.description`) show, served from source or
# from a built bento (where it becomes the bento's README: bentofile.yaml has no description).
SERVICE_DESCRIPTION = f"""\
# StreamFlow churn service

The probability that a StreamFlow subscriber churns in the coming month, from the current
**champion** model (`models:/streamflow_churn@champion` in MLflow) scored on the user's features
read from the Feast online store (exactly the features of the champion's FeatureService). A newly
promoted champion is picked up within about 10 s, without a restart and without failing a request.

## Routes

| route | request | answer |
| --- | --- | --- |
| `POST /predict` | `{{"user_id": "7590-VHVEG"}}` | `user_id`, `churn_probability`, `churn` (probability >= `threshold`), `threshold`, `model` (`name`, `version`), `features`, `reasons` |
| `POST /predict_batch` | `{{"user_ids": [...]}}`, 1 to {MAX_BATCH_IDS} ids | one answer per id, in order; an id that fails gets its error object with its `status` |
| `POST /features` | `{{"user_id": ...}}` | the online features of the champion's FeatureService |
| `GET /healthz`, `/readyz`, `/metrics` | | alive; ready once a champion and the feature store are loaded; Prometheus metrics |

`reasons`: the top 3 features raising this user's risk, largest first, each `{{feature, value,
contribution}}`, where `contribution` is the feature's exact share of the logit relative to a
reference user (for the default spline logistic regression and plain logistic regression; tree
models give an empty list).

## Errors

| status | body | when |
| --- | --- | --- |
| 404 | `{{"error": "unknown_user", "user_id": ...}}` | the online store has no features for this user |
| 422 | `{{"error": "missing_features", "user_id": ..., "missing": [...]}}` | some of the champion's features are missing |
| 400 | a validation message | malformed JSON, an id not like `7590-VHVEG`, an empty or oversize batch, a body over {MAX_BODY_BYTES // 1024} KB |
| 503 | `{{"error": "model_unavailable" or "feature_store_unavailable", "detail": ...}}` | no champion loaded yet, or the feature store can't answer |

A bad request never gets a 500. Every prediction is recorded in the warehouse's `prediction_log`.
While the registry alias `shadow` names another version (a challenger waiting for approval), it is
also scored on each prediction, off the request path, and logged beside the champion's probability.
"""  # noqa: E501 (markdown tables: a row is one line)


class DocumentedService(bentoml.Service):
    """A BentoML service whose docs page shows its own description when served from source too
    (BentoML 1.4 shows its template README unless the service comes from a built bento)."""

    @property
    def doc(self) -> str:
        return self.bento.doc if self.bento is not None else (self.description or super().doc)


def error_response(error: ServingError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


@bentoml.service(
    name="churn_service",
    description=SERVICE_DESCRIPTION,
    service_class=DocumentedService,
    workers=WORKERS,
    traffic={"timeout": 30, "max_concurrency": 512},
    # Both off by default, for their cost per request (config/settings.py says how much).
    logging={"access": {"enabled": get_settings().service_access_log}},
    tracing={} if get_settings().service_tracing else {"excluded_urls": API_ROUTES},
    http={"host": get_settings().service_host, "port": get_settings().service_port},
)
class ChurnService:
    """Churn probability of a subscriber from the current champion and its FeatureService's online features."""

    def __init__(self) -> None:
        # Every loaded champion (and the libraries under it) is frozen out of the collector's scans:
        # full collections over ~490,000 objects stopped a worker for ~300 ms every few seconds.
        self.gc_pauses = GcPauses().install()
        self.runtime = ServiceRuntime(get_settings(), after_swap=self.settle_heap, gc_pauses=self.gc_pauses)
        self.runtime.start()

    def settle_heap(self) -> None:
        settle_heap()
        self.gc_pauses.forget_longest()

    def __is_ready__(self) -> bool:
        return self.runtime.ready()

    def __metrics__(self, content: str) -> str:
        # BentoML's own metrics (requests, latencies), then this worker's.
        return content + self.runtime.metrics()

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.runtime.stop()

    @bentoml.api
    async def predict(self, user_id: UserId) -> Prediction:
        """Churn probability, decision, threshold, model version and the features used."""
        try:
            # Already plain JSON types: skip re-validating the answer through the Prediction model.
            return JSONResponse(await self.runtime.batcher.submit(user_id))
        except ServingError as error:
            return error_response(error)

    @bentoml.api
    def predict_batch(
        self, user_ids: Annotated[list[UserId], Field(min_length=1, max_length=MAX_BATCH_IDS)]
    ) -> list[dict[str, Any]]:
        """One answer per id, in order; an unknown id or one lacking features gets an error item."""
        try:
            outcomes = self.runtime.scorer.score(user_ids)
        except ServingError as error:
            return error_response(error)
        return [
            outcome.body() | {"status": outcome.status} if isinstance(outcome, ServingError) else outcome
            for outcome in outcomes
        ]

    @bentoml.api
    def features(self, user_id: UserId) -> dict[str, Any]:
        """The online features of the champion's FeatureService for one user."""
        try:
            return self.runtime.scorer.features(user_id)
        except ServingError as error:
            return error_response(error)


# BentoML's traffic.timeout, minus the live timer its middleware leaves behind per request.
if get_settings().service_cancel_request_timers:
    bentoml_extension.install_request_timer_fix()
ChurnService.add_asgi_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
ChurnService.add_asgi_middleware(JsonBodyOnly)
