"""The churn service with BentoML's own adaptive batching instead of the hand-written MicroBatcher.

Only for bench/bench_serving.py: the same runtime (feature reader, champion, prediction log), with
`POST /predict` as a `@bentoml.api(batchable=True)` taking `{"user_ids": [one id]}`; BentoML's
dispatcher concatenates concurrent requests into one call of up to 64 ids.
"""

from __future__ import annotations

import os

for _threads_var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_threads_var, "1")

import bentoml  # noqa: E402

from streamflow_mlops.config.settings import get_settings  # noqa: E402
from streamflow_mlops.extensions import bentoml as bentoml_extension  # noqa: E402
from streamflow_mlops.serving.errors import ServingError  # noqa: E402
from streamflow_mlops.serving.heap import settle_heap  # noqa: E402
from streamflow_mlops.serving.runtime import ServiceRuntime, worker_count  # noqa: E402
from streamflow_mlops.serving.scoring import MAX_COALESCED  # noqa: E402

WORKERS = worker_count(get_settings())


@bentoml.service(
    name="churn_service_batchable",
    workers=WORKERS,
    traffic={"timeout": 30, "max_concurrency": 512},
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": ["/predict"]},
)
class BatchableChurnService:
    def __init__(self) -> None:
        self.runtime = ServiceRuntime(get_settings(), after_swap=settle_heap)
        self.runtime.start()

    def __is_ready__(self) -> bool:
        return self.runtime.ready()

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=MAX_COALESCED, max_latency_ms=10_000)
    def predict(self, user_ids: list[str]) -> list[dict]:
        outcomes = self.runtime.scorer.score(user_ids)
        return [o.body() | {"status": o.status} if isinstance(o, ServingError) else o for o in outcomes]


bentoml_extension.install_request_timer_fix()
