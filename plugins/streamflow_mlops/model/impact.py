"""What promoting a challenger would change for the retention team, before it happens (pure, no I/O).

Both models score the whole current month (`ImpactTally.add`, a chunk at a time; the scores are
kept as two float arrays for the rank correlation, 16 bytes a user). The report: how many of the
top `top_k` (by the retention list's ranking: expected loss, or probability) would leave the list
and how many would enter it, the Spearman correlation of the two rankings, how many users' churn
decision (each model at its own threshold) flips either way, each model's predicted churn rate,
and, on the evaluation rows whose outcome is known, each model's calibration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

CALIBRATION_BINS = 10


def top_users(ids: np.ndarray, values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k rows of highest value, ties by user_id (the retention list's order), as (ids, values)."""
    order = np.lexsort((ids, -values))[:k]
    return ids[order], values[order]


def calibration(labels: np.ndarray, scores: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, float]:
    """Mean predicted against observed churn, the Brier score and the expected calibration error
    (the row-weighted gap between predicted and observed churn over equal-count bins)."""
    labels, scores = np.asarray(labels, dtype=float), np.asarray(scores, dtype=float)
    if len(labels) == 0:
        return {"mean_probability": float("nan"), "observed_churn_rate": float("nan"), "brier": float("nan"),
                "calibration_error": float("nan")}  # fmt: skip
    order = np.argsort(scores, kind="stable")
    gaps = [
        abs(scores[part].mean() - labels[part].mean()) * len(part) for part in np.array_split(order, bins) if len(part)
    ]
    return {
        "mean_probability": float(scores.mean()),
        "observed_churn_rate": float(labels.mean()),
        "brier": float(np.mean((scores - labels) ** 2)),
        "calibration_error": float(sum(gaps) / len(labels)),
    }


@dataclass
class ImpactTally:
    """Accumulates both models' scores of a month, a chunk at a time, in user order."""

    top_k: int
    champion_threshold: float
    challenger_threshold: float
    _champion: list[np.ndarray] = field(default_factory=list)
    _challenger: list[np.ndarray] = field(default_factory=list)
    _top: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def add(self, ids: np.ndarray, champion: np.ndarray, challenger: np.ndarray, weight: np.ndarray) -> None:
        """One chunk: user ids, both models' probabilities, and each user's weight in the ranking
        (the monthly fee for expected loss, ones for probability)."""
        ids = np.asarray(ids, dtype=object)
        self._champion.append(np.asarray(champion, dtype=float))
        self._challenger.append(np.asarray(challenger, dtype=float))
        for name, scores in (("champion", champion), ("challenger", challenger)):
            kept_ids, kept = self._top.get(name, (np.empty(0, dtype=object), np.empty(0)))
            self._top[name] = top_users(
                np.concatenate([kept_ids, ids]), np.concatenate([kept, np.asarray(scores) * weight]), self.top_k
            )

    def report(self, eval_labels: np.ndarray, eval_champion: np.ndarray, eval_challenger: np.ndarray) -> dict[str, Any]:
        from scipy.stats import spearmanr

        champion, challenger = np.concatenate(self._champion), np.concatenate(self._challenger)
        before, after = set(self._top["champion"][0]), set(self._top["challenger"][0])
        churn_before, churn_after = champion >= self.champion_threshold, challenger >= self.challenger_threshold
        return {
            "users": len(champion),
            "top_k": self.top_k,
            "top_k_leaving": len(before - after),
            "top_k_entering": len(after - before),
            "entering_users": sorted(after - before),
            "leaving_users": sorted(before - after),
            "spearman": float(spearmanr(champion, challenger).statistic) if len(champion) > 1 else float("nan"),
            "decision_flips": int((churn_before != churn_after).sum()),
            "flips_to_churn": int((~churn_before & churn_after).sum()),
            "flips_to_stay": int((churn_before & ~churn_after).sum()),
            "champion": {
                "threshold": self.champion_threshold,
                "predicted_churn_rate": float(churn_before.mean()),
                **calibration(eval_labels, eval_champion),
            },
            "challenger": {
                "threshold": self.challenger_threshold,
                "predicted_churn_rate": float(churn_after.mean()),
                **calibration(eval_labels, eval_challenger),
            },
        }


def impact_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's headline numbers as MLflow metrics of the challenger's run (`impact_*`)."""
    return {
        "impact_top_k_entering": report["top_k_entering"],
        "impact_top_k_leaving": report["top_k_leaving"],
        "impact_spearman": report["spearman"],
        "impact_decision_flips": report["decision_flips"],
        "impact_champion_predicted_churn_rate": report["champion"]["predicted_churn_rate"],
        "impact_challenger_predicted_churn_rate": report["challenger"]["predicted_churn_rate"],
        "impact_champion_calibration_error": report["champion"]["calibration_error"],
        "impact_challenger_calibration_error": report["challenger"]["calibration_error"],
    }
