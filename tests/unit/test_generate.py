from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

from streamflow_mlops.__main__ import main
from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import RAW_TABLES, USER_ID_REGEX
from streamflow_mlops.synthetic.generate import BREAKAGES, DropSpec, build_drop, default_drift

TELCO = Path(__file__).resolve().parents[3] / "shared" / "data" / "telco" / "WA_Fn-UseC_-Telco-Customer-Churn.csv"


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_seed_same_bytes(tmp_path):
    main(["generate", "--out", str(tmp_path / "a"), "--months", "2", "--users", "500"])
    main(["generate", "--out", str(tmp_path / "b"), "--months", "2", "--users", "500"])
    main(["generate", "--out", str(tmp_path / "c"), "--months", "1", "--users", "500", "--seed", "7"])
    assert digest(tmp_path / "a" / "month_001") == digest(tmp_path / "b" / "month_001")
    assert digest(tmp_path / "a" / "month_000") != digest(tmp_path / "c" / "month_000")


def test_drop_layout_and_manifest(tmp_path):
    main(["generate", "--out", str(tmp_path), "--months", "2", "--users", "300"])
    folder = tmp_path / "month_001"
    assert {p.name for p in folder.iterdir()} == {t.file for t in RAW_TABLES} | {"manifest.json", "_truth.csv"}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["as_of"] == "2024-02-29" and manifest["drift"]["fee_rise"] > 0


def test_as_of_dates():
    assert [Month(m).as_of.isoformat() for m in (0, 1, 2, 11, 12)] == [
        "2024-01-31",
        "2024-02-29",
        "2024-03-31",
        "2024-12-31",
        "2025-01-31",
    ]
    assert Month.parse("month_007") == Month.parse("7") == Month.parse(Month(7)) == Month(7)


@pytest.mark.parametrize("telco", [None, TELCO])
def test_churn_is_realistic_and_learnable(telco):
    if telco is not None and not telco.exists():
        pytest.skip("shared Telco CSV not present")
    tables, truth = build_drop(DropSpec(0), telco_csv=telco)
    users = tables["users"]
    assert len(users) == 7043 and users.user_id.is_unique
    assert users.user_id.str.fullmatch(USER_ID_REGEX[1:-1]).all()
    rate = tables["labels"].churn_label.mean()
    assert 0.22 <= rate <= 0.30
    best = roc_auc_score(tables["labels"].churn_label, truth.churn_probability)
    assert 0.85 <= best <= 0.91
    # churn follows the drivers a real service sees
    merged = tables["users"].merge(tables["labels"]).merge(tables["payments_agg_90d"])
    assert merged[merged.months_active < 6].churn_label.mean() > merged[merged.months_active > 36].churn_label.mean()
    assert (
        merged[merged.failed_payments_90d > 0].churn_label.mean()
        > merged[merged.failed_payments_90d == 0].churn_label.mean()
    )


def test_month_001_drifts_by_default():
    base, _ = build_drop(DropSpec(0))
    drifted, _ = build_drop(DropSpec(1, drift=default_drift(1)))
    calm, _ = build_drop(DropSpec(2, drift=default_drift(2)))
    fee = lambda t: t["subscriptions"].monthly_fee.mean()  # noqa: E731
    assert fee(drifted) > 1.1 * fee(base)
    assert abs(fee(calm) - fee(base)) < 0.02 * fee(base)
    assert drifted["usage_agg_30d"].rebuffer_events_7d.mean() > 1.5 * base["usage_agg_30d"].rebuffer_events_7d.mean()


@pytest.mark.parametrize("kind", sorted(BREAKAGES))
def test_broken_batches_differ_from_good(kind):
    good, _ = build_drop(DropSpec(0, users=400))
    bad, _ = build_drop(DropSpec(0, users=400, broken=kind))
    assert any(not good[name].equals(bad[name]) for name in good)


def test_treatment_effect_from_the_cli_cuts_only_the_reached_users_churn(tmp_path):
    """`generate --treatment-effect` (issue 28): the users of last month's contact list have their
    churn cut (a label can only go from churned to stayed), the drop carries contacts.csv, and an
    effect of 0 changes no label."""
    import pandas as pd

    def month_002(out: Path, *flags: str) -> Path:
        main(["generate", "--out", str(out), "--start", "2", "--months", "1", "--users", "2000", *flags])
        return out / "month_002"

    def labels(folder: Path) -> pd.Series:
        return pd.read_csv(folder / "labels.csv", dtype={"user_id": str}).set_index("user_id")["churn_label"]

    plain = month_002(tmp_path / "plain")
    listed = labels(plain).index[:800].tolist()
    contact_list = tmp_path / "month_001_top800.csv"
    pd.DataFrame({"rank": range(1, 801), "user_id": listed}).to_csv(contact_list, index=False)
    treated = month_002(tmp_path / "treated", "--treatment-effect", "0.3", "--contact-list", str(contact_list))
    before, after = labels(plain), labels(treated)
    changed = before[before != after]
    assert len(changed) > 0 and set(changed.index) <= set(listed) and (changed == 1).all()
    assert pd.read_csv(treated / "contacts.csv", dtype=str)["user_id"].tolist() == listed
    manifest = json.loads((treated / "manifest.json").read_text())
    assert manifest["treatment_effect"] == 0.3 and manifest["contacts"] == 800
    untouched = month_002(tmp_path / "zero", "--treatment-effect", "0", "--contact-list", str(contact_list))
    assert labels(untouched).equals(before) and (untouched / "contacts.csv").exists()
