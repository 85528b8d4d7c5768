"""A model card per registered version: a short markdown page in MLflow, and the version's description.

Everything on the card is read back from the registry (the version's tags, its run's params and
metrics, its validation rows), so the card says what MLflow says, and it can be written again
later, when realized performance is known (`publish_model_card(version, realized=...)`).
The card and its calibration plot are artifacts of the version's run (`model_card/`); the
version's description holds the same markdown, which the MLflow UI renders on the version page.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streamflow_mlops.config.schema import LABEL
from streamflow_mlops.config.settings import REGISTERED_MODEL

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

CARD_DIR = "model_card"
CARD_FILE = "model_card.md"
CALIBRATION_FILE = "calibration.png"
# Ten equal-count bins: each point averages ~140 of a 7,043-user month's validation rows.
CALIBRATION_BINS = 10
METRICS = (
    ("val_auc", "ROC AUC"),
    ("val_average_precision", "average precision (PR AUC)"),
    ("val_log_loss", "log loss"),
    ("val_f1", "F1 at the threshold"),
    ("val_precision", "precision at the threshold"),
    ("val_recall", "recall at the threshold"),
    ("val_accuracy", "accuracy at the threshold"),
)


def _number(text: Any, digits: int = 4) -> str:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if value != value else f"{value:.{digits}f}"


def _approval(tags: Mapping[str, str]) -> str:
    """The reviewer's answer (pipelines/review.py): outcome, who, when, their comment."""
    if tags.get("approval") == "timed_out":
        return f"timed out at {tags.get('approval_at', '?')}: no answer, not promoted"
    comment = f": {tags['approval_comment']}" if tags.get("approval_comment") else ""
    return f"{tags['approval']} by {tags.get('approval_by') or '?'} at {tags.get('approval_at', '?')}{comment}"


def model_card_markdown(
    version: str,
    tags: Mapping[str, str],
    params: Mapping[str, str],
    metrics: Mapping[str, float],
    run_id: str,
    realized: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The card's markdown from a version's tags, its run's params and metrics (pure)."""
    gain = tags.get("auc_gain", "")
    if gain:
        comparison = (
            f"AUC gain over champion v{tags.get('champion_version')} ({_number(tags.get('champion_auc'))}): "
            f"{_number(gain)}, {float(tags.get('auc_gain_ci_level') or 0.95):.0%} paired-bootstrap interval "
            f"[{_number(tags.get('auc_gain_ci_low'))}, {_number(tags.get('auc_gain_ci_high'))}], "
            f"required gain {tags.get('delta', 'n/a')}"
        )
    else:
        comparison = "no champion to compare with (first model)" if not tags.get("champion_version") else "n/a"
    lines = [
        f"# {REGISTERED_MODEL} v{version}",
        "",
        f"**Decision: {tags.get('decision', 'pending')}**: {tags.get('reason', '')}",
        "",
        "| | |",
        "| --- | --- |",
        f"| model | `{tags.get('model', params.get('model', '?'))}` ({params.get('model_class', '?')}), "
        f"seed {tags.get('seed', '?')} |",
        f"| training month | {tags.get('month', '?')}: features point-in-time at as_of {tags.get('as_of', '?')}, "
        f"labels of the period starting then |",
        f"| rows | {params.get('n_train', '?')} training, {params.get('n_val', '?')} validation (stratified, seeded) |",
        f"| FeatureService | `{tags.get('feature_service', '?')}` ({params.get('n_features', '?')} features) |",
        f"| decision threshold | {_number(tags.get('threshold'))} (F1-best on the validation rows) |",
        f"| vs champion | {comparison} |",
        *([f"| approval | {_approval(tags)} |"] if tags.get("approval") else []),
        "",
        "## Validation metrics",
        "",
        "| metric | value |",
        "| --- | --- |",
        *(f"| {label} | {_number(metrics.get(key))} |" for key, label in METRICS if key in metrics),
    ]
    if "best_achievable_auc" in metrics:
        lines.append(f"| best achievable AUC (generator's truth) | {_number(metrics['best_achievable_auc'])} |")
    lines += ["", "## Realized performance", ""]
    if realized:
        lines += ["| month | rows | AUC |", "| --- | --- | --- |"]
        lines += [f"| {r['month']} | {r.get('rows', '?')} | {_number(r.get('auc'))} |" for r in realized]
    else:
        lines.append("Not known yet: it appears once a later month brings labels for users this model scored.")
    lines += [
        "",
        "## Calibration",
        "",
        f"Reliability plot of the validation rows: `runs:/{run_id}/{CARD_DIR}/{CALIBRATION_FILE}` "
        f"(this card: `runs:/{run_id}/{CARD_DIR}/{CARD_FILE}`).",
        "",
    ]
    return "\n".join(lines)


def calibration_plot(labels: np.ndarray, scores: np.ndarray, path: Path) -> None:
    """Observed churn rate against mean predicted probability, in equal-count bins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve

    observed, predicted = calibration_curve(labels, scores, n_bins=CALIBRATION_BINS, strategy="quantile")
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    ax.plot(predicted, observed, marker="o", label="validation rows")
    ax.set_xlabel("mean predicted churn probability")
    ax.set_ylabel("observed churn rate")
    ax.set_title("Calibration (validation)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def publish_model_card(client: MlflowClient, version: str, realized: Sequence[Mapping[str, Any]] = ()) -> str:
    """Write the card of `version` (and its calibration plot) to its run and its registry
    description; returns the markdown. Call again with `realized` rows to add realized performance."""
    from streamflow_mlops.model.registry import validation_rows
    from streamflow_mlops.model.tracking import CHALLENGER_SCORE

    model_version = client.get_model_version(REGISTERED_MODEL, str(version))
    run = client.get_run(model_version.run_id)
    markdown = model_card_markdown(
        str(version), model_version.tags, run.data.params, run.data.metrics, model_version.run_id, realized
    )
    rows = validation_rows(model_version.run_id, [LABEL, CHALLENGER_SCORE])
    with tempfile.TemporaryDirectory() as tmp:
        card, plot = Path(tmp) / CARD_FILE, Path(tmp) / CALIBRATION_FILE
        card.write_text(markdown)
        calibration_plot(rows[LABEL].to_numpy(), rows[CHALLENGER_SCORE].to_numpy(), plot)
        client.log_artifact(model_version.run_id, str(card), artifact_path=CARD_DIR)
        client.log_artifact(model_version.run_id, str(plot), artifact_path=CARD_DIR)
    client.update_model_version(REGISTERED_MODEL, str(version), description=markdown)
    log.info("model card of %s v%s written (%s)", REGISTERED_MODEL, version, model_version.tags.get("decision"))
    return markdown
