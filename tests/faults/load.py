"""HTTP load on the churn service from a thread pool, every answer kept with its time and outcome."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx


def say(message: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d}] {message}", flush=True)


@dataclass(frozen=True)
class Answer:
    """One /predict call: when it started and ended (wall clock, comparable with the containers'
    timestamps), its status (None: no HTTP answer at all) and error code or served model version."""

    started: float
    ended: float
    status: int | None
    error: str | None = None
    version: str | None = None

    @property
    def seconds(self) -> float:
        return self.ended - self.started


class PredictLoad:
    """`threads` clients posting /predict for random known users until the block exits.

    A pause after each call keeps the load steady without starving the stack's other containers
    on a 2-core machine; a longer one after a refused connection keeps a down service from turning
    the load into a busy loop.
    """

    def __init__(self, url: str, users: Sequence[str], threads: int = 4, timeout_s: float = 30.0) -> None:
        self.url = url
        self.users = list(users)
        self.threads = threads
        self.timeout_s = timeout_s
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list = []

    def __enter__(self) -> PredictLoad:
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="predict-load")
        self._futures = [self._pool.submit(self._client, seed) for seed in range(self.threads)]
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        assert self._pool is not None
        self._pool.shutdown(wait=True)
        for future in self._futures:
            future.result()

    def _client(self, seed: int) -> None:
        pick = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=self.timeout_s) as client:
            for _ in itertools.count():
                if self._stop.is_set():
                    return
                answer = self._call(client, pick.choice(self.users))
                with self._lock:
                    self.answers.append(answer)
                self._stop.wait(0.01 if answer.status is not None else 0.2)

    def _call(self, client: httpx.Client, user_id: str) -> Answer:
        started = time.time()
        try:
            response = client.post("/predict", json={"user_id": user_id})
        except httpx.HTTPError as exc:
            return Answer(started, time.time(), None, type(exc).__name__)
        ended = time.time()
        try:
            body = response.json()
        except ValueError:
            return Answer(started, ended, response.status_code, "not_json")
        if response.status_code == 200:
            return Answer(started, ended, 200, version=body["model"]["version"])
        return Answer(started, ended, response.status_code, body.get("error") if isinstance(body, dict) else "?")

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def between(self, start: float, end: float = float("inf")) -> list[Answer]:
        """Calls started in [start, end)."""
        return [a for a in self.snapshot() if start <= a.started < end]

    def first_failure_after(self, moment: float) -> Answer | None:
        """The first call started after `moment` that got no 200, or None."""
        return min(
            (a for a in self.snapshot() if a.started >= moment and a.status != 200),
            key=lambda a: a.started,
            default=None,
        )

    def first_success_after(self, moment: float) -> Answer | None:
        """The first call started after `moment` that got a 200, or None."""
        return min(
            (a for a in self.snapshot() if a.started >= moment and a.status == 200),
            key=lambda a: a.started,
            default=None,
        )


def tally(answers: Sequence[Answer]) -> dict[str, int]:
    """Outcomes counted as `200`, `503 feature_store_unavailable`, `no answer ConnectError`..."""
    counts = Counter("200" if a.status == 200 else f"{a.status or 'no answer'} {a.error}".strip() for a in answers)
    return dict(counts.most_common())


def in_flight(answers: Sequence[Answer], moment: float) -> list[Answer]:
    """Calls that started before `moment` and ended after it: the fault landed during them."""
    return [a for a in answers if a.started < moment < a.ended]
