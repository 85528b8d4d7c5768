"""The service's error answers: each carries its HTTP status and JSON body (docs/architecture.md, Service)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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
