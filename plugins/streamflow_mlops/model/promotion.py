"""The champion/challenger decision: pure functions, no I/O (docs/architecture.md, "Model registry").

Every promotion rule lives here: the AUC gain against `delta` with its paired bootstrap
(`should_promote`), a month older than the champion's (`month_older_than_champion`), a champion
that can't be scored (fails closed), and `Comparison`, the one record of what was compared and
decided that becomes both the version's tags and the training task's result.

A challenger replaces the champion only when its validation AUC is higher by at least `delta`
AND a paired bootstrap over the shared validation rows says the gain is not noise. Both models
are scored on exactly the same rows, so the bootstrap resamples rows once and recomputes both
AUCs on each resample: the row-to-row noise that both models share cancels out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

from streamflow_mlops.config.months import Month

# One-sided 95%: the gain counts as real when its 5th bootstrap percentile is above zero.
DEFAULT_CONFIDENCE = 0.90
DEFAULT_RESAMPLES = 1000
# Rows each resample draws at most (an m-out-of-n bootstrap beyond; see paired_bootstrap_auc_gain):
# 200,000 is the whole evaluation holdout of a 1M-user month, where the interval is already a
# few thousandths of AUC wide.
BOOTSTRAP_MAX_ROWS = 200_000
# resamples x rows per block: ~80 MB per array of the block (indices, both models' scores, ranks).
BOOTSTRAP_BLOCK_CELLS = 10_000_000
# Float subtraction of AUCs (0.805 - 0.8) can land a hair under an exact delta.
AUC_TOLERANCE = 1e-12


@dataclass(frozen=True)
class BootstrapGain:
    """AUC(challenger) - AUC(champion) on the full rows, and its bootstrap confidence interval."""

    gain: float
    ci_low: float
    ci_high: float
    confidence: float
    resamples: int


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def auc_by_rank(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of `scores` (Mann-Whitney U over average ranks, ties count half).

    `labels` and `scores` are 2-D (resamples x rows) or 1-D; the answer has one AUC per row.
    """
    labels = np.atleast_2d(labels).astype(bool)
    scores = np.atleast_2d(scores)
    ranks = rankdata(scores, axis=1)
    positives = labels.sum(axis=1)
    negatives = labels.shape[1] - positives
    rank_sum = np.where(labels, ranks, 0.0).sum(axis=1)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def paired_bootstrap_auc_gain(
    labels: np.ndarray,
    challenger_scores: np.ndarray,
    champion_scores: np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
    max_rows: int = BOOTSTRAP_MAX_ROWS,
) -> BootstrapGain:
    """Seeded, stratified, paired bootstrap of the AUC gain of the challenger over the champion.

    Each resample draws positives and negatives separately (so every resample has both classes
    and the class balance of the validation set) and scores both models on the same draw. The
    gain is always that of all rows. Beyond `max_rows` rows each resample draws `max_rows` of
    them (an m-out-of-n bootstrap) and the spread of the resampled gains around the full gain is
    scaled by sqrt(m / n): the AUC is a smooth statistic, so its error shrinks as 1/sqrt(n) and
    the interval is the n-row one, at a bounded cost (ten million rows cost what 200,000 do).
    Resamples are drawn in blocks of at most BOOTSTRAP_BLOCK_CELLS cells, so memory is bounded too.
    """
    y = np.asarray(labels).astype(int)
    challenger = np.asarray(challenger_scores, dtype=float)
    champion = np.asarray(champion_scores, dtype=float)
    if not (len(y) == len(challenger) == len(champion)):
        raise ValueError("labels and both score arrays must have the same length")
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("the validation rows need both classes to compute an AUC")
    gain = float(auc_by_rank(y, challenger)[0] - auc_by_rank(y, champion)[0])
    drawn = min(len(y), max_rows)
    drawn_pos = min(len(pos), max(1, round(len(pos) * drawn / len(y))))
    drawn_neg = min(len(neg), max(1, drawn - drawn_pos))
    rng = np.random.default_rng(seed)
    block = max(1, BOOTSTRAP_BLOCK_CELLS // (drawn_pos + drawn_neg))
    gains = np.concatenate(
        [
            _resampled_gains(rng, pos, neg, drawn_pos, drawn_neg, min(block, resamples - start), challenger, champion)
            for start in range(0, resamples, block)
        ]
    )
    if drawn_pos + drawn_neg < len(y):
        gains = gain + (gains - gain) * math.sqrt((drawn_pos + drawn_neg) / len(y))
    tail = (1 - confidence) / 2
    low, high = np.quantile(gains, [tail, 1 - tail])
    return BootstrapGain(gain, float(low), float(high), confidence, resamples)


def _resampled_gains(
    rng: np.random.Generator,
    pos: np.ndarray,
    neg: np.ndarray,
    drawn_pos: int,
    drawn_neg: int,
    resamples: int,
    challenger: np.ndarray,
    champion: np.ndarray,
) -> np.ndarray:
    rows = np.concatenate(
        [rng.choice(pos, size=(resamples, drawn_pos)), rng.choice(neg, size=(resamples, drawn_neg))], axis=1
    )
    resampled_labels = np.concatenate(
        [np.ones((resamples, drawn_pos), bool), np.zeros((resamples, drawn_neg), bool)], axis=1
    )
    return auc_by_rank(resampled_labels, challenger[rows]) - auc_by_rank(resampled_labels, champion[rows])


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def finite_or_none(value: Any) -> float | None:
    """A float for JSON (XCom, summaries): None for a missing or non-finite value."""
    return float(value) if value is not None and math.isfinite(float(value)) else None


def should_promote(
    challenger_auc: float,
    champion_auc: float | None,
    delta: float,
    bootstrap: BootstrapGain | None = None,
) -> Decision:
    """Promote the challenger? No champion yields; a champion that could not be scored on the
    challenger's rows (NaN AUC) fails closed: it stays."""
    if _missing(challenger_auc):
        return Decision(False, "the challenger has no validation AUC")
    if champion_auc is None:
        return Decision(True, f"no champion yet; challenger val_auc {challenger_auc:.4f}")
    if _missing(champion_auc):
        return Decision(False, "the champion could not be scored on the challenger's validation rows: keeping it")
    gain = challenger_auc - champion_auc
    if gain + AUC_TOLERANCE < delta:
        return Decision(
            False,
            f"AUC gain {gain:+.4f} ({challenger_auc:.4f} vs champion {champion_auc:.4f}) is below delta {delta:.4f}",
        )
    if bootstrap is None or _missing(bootstrap.ci_low):
        return Decision(False, f"AUC gain {gain:+.4f} >= delta but no bootstrap to tell it from noise")
    interval = f"{bootstrap.confidence:.0%} CI [{bootstrap.ci_low:+.4f}, {bootstrap.ci_high:+.4f}]"
    if bootstrap.ci_low <= 0:
        return Decision(False, f"AUC gain {gain:+.4f} >= delta {delta:.4f} but could be noise: {interval} includes 0")
    return Decision(
        True, f"AUC gain {gain:+.4f} >= delta {delta:.4f} ({challenger_auc:.4f} vs {champion_auc:.4f}), {interval}"
    )


def month_older_than_champion(month: Month, champion_month: Month | None) -> str | None:
    """Why `month` can't retrain the champion, or None: a month older than the one the champion
    was trained on (a re-delivery, a re-run) never retrains or promotes automatically."""
    if champion_month is None or month >= champion_month:
        return None
    return f"{month} is older than the champion's training month {champion_month}: no automatic retrain"


def score_gain(
    labels: np.ndarray, challenger_scores: np.ndarray, champion_scores: np.ndarray | None, seed: int
) -> tuple[float, float | None, BootstrapGain | None]:
    """(challenger AUC, champion AUC, bootstrap of the gain) on the same rows. No champion scores:
    (auc, None, None); champion scores that are not all finite (a champion that can't be scored
    on these rows): (auc, NaN, None). The AUCs are scikit-learn's, as the logged val_auc."""
    from sklearn.metrics import roc_auc_score

    challenger_auc = float(roc_auc_score(labels, challenger_scores))
    if champion_scores is None:
        return challenger_auc, None, None
    if not np.all(np.isfinite(champion_scores)):
        return challenger_auc, float("nan"), None
    champion_auc = float(roc_auc_score(labels, champion_scores))
    bootstrap = paired_bootstrap_auc_gain(labels, challenger_scores, champion_scores, seed=seed)
    return challenger_auc, champion_auc, bootstrap


@dataclass(frozen=True)
class Comparison:
    """A challenger compared with the champion on the evaluation rows, and the decision."""

    version: str
    month: Month
    delta: float
    challenger_auc: float
    champion_version: str | None
    champion_auc: float | None
    bootstrap: BootstrapGain | None
    eval_population: str
    eval_rows: int
    decision: Decision

    @classmethod
    def decide(cls, *, champion_month: Month | None, force: bool = False, **facts: Any) -> Comparison:
        """Apply every rule: a month older than the champion's stays out unless `force`, else `should_promote`."""
        decision = should_promote(facts["challenger_auc"], facts["champion_auc"], facts["delta"], facts["bootstrap"])
        stale = month_older_than_champion(facts["month"], champion_month) if facts["champion_version"] else None
        if stale and not force:
            decision = Decision(False, stale)
        return cls(decision=decision, **facts)

    @property
    def champion_unscorable(self) -> bool:
        return self.champion_auc is not None and math.isnan(self.champion_auc)

    def tags(self) -> dict[str, str]:
        """The challenger version's tags (strings; empty where there is nothing to say)."""
        gain = self.bootstrap

        def text(value: float | None) -> str:
            return "" if value is None else repr(value)

        return {
            "decision": "promote" if self.decision.promote else "keep_champion",
            "reason": self.decision.reason,
            "delta": repr(self.delta),
            "challenger_auc": repr(self.challenger_auc),
            "champion_version": self.champion_version or "",
            "champion_auc": text(self.champion_auc),
            "auc_gain": text(gain.gain if gain else None),
            "auc_gain_ci_low": text(gain.ci_low if gain else None),
            "auc_gain_ci_high": text(gain.ci_high if gain else None),
            "auc_gain_ci_level": text(gain.confidence if gain else None),
            "eval_population": self.eval_population,
            "eval_rows": str(self.eval_rows),
        }

    def summary(self) -> dict[str, Any]:
        """The same facts for the task's result (JSON: None for what is missing or not finite)."""
        gain = self.bootstrap
        return {
            "promote": self.decision.promote,
            "reason": self.decision.reason,
            "delta": self.delta,
            "challenger_auc": self.challenger_auc,
            "champion_version": self.champion_version,
            "champion_auc": finite_or_none(self.champion_auc),
            "auc_gain": gain.gain if gain else None,
            "auc_gain_ci": [gain.ci_low, gain.ci_high] if gain else None,
            "eval_population": self.eval_population,
            "eval_rows": self.eval_rows,
        }
