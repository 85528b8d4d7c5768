"""The evaluation population: users no model ever trains on (pure, no I/O; DESIGN "Model registry").

The generator (and a real subscriber base) follows the same users month after month. With a
fresh random split per training run, most of a challenger's validation users were in the
champion's training set, and the comparison favoured the incumbent. Instead, a stable hash of
`user_id` puts a fixed share of users in the holdout for good: every training set of every model
leaves them out, and champion and challenger are compared on the current month's rows of those
users, rows neither has seen.

The rule, salt-free so that anyone can recompute it from an id alone:
`bucket(id) = int.from_bytes(blake2b(id.encode("utf-8"), digest_size=8).digest(), "big") / 2**64`,
and a user is held out when `bucket(id) < EVAL_HOLDOUT_SHARE`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from streamflow_mlops.config.months import Month

# 20%: on the default 7,043 users about 1,400 held-out rows a month (about 370 churners), the
# size of the validation split the random scheme used, so the paired bootstrap is as tight as
# before; the models train on the other 80% (with the threshold chosen by cross-validation on
# them, model/training.py), as they did.
EVAL_HOLDOUT_SHARE = 0.20
_SCALE = float(2**64)


def holdout_bucket(user_id: str) -> float:
    """A user's fixed position in [0, 1): blake2b-64 of the UTF-8 id over 2**64."""
    digest = hashlib.blake2b(str(user_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def is_eval_holdout(user_ids: Iterable[str], share: float = EVAL_HOLDOUT_SHARE) -> np.ndarray:
    """Boolean mask: which of `user_ids` belong to the evaluation population."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"the evaluation share must be within (0, 1), got {share}")
    return np.fromiter((holdout_bucket(u) < share for u in user_ids), dtype=bool)


def eval_population(month: Month, share: float = EVAL_HOLDOUT_SHARE) -> str:
    """The `eval_population` tag: which users and which month's rows decided, e.g. `holdout-20%:month_001`."""
    return f"holdout-{share:.0%}:{month.name}"
