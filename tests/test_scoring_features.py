"""Derived features and mass calibration, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from calcpipe.scoring import (
    ScoringInputError,
    cac_drs,
    load_registry,
    lookup_c_ha,
    measure_c_ha,
    risk_category,
    score,
    study_features,
)


@pytest.mark.parametrize(("value", "paper", "five"), [
    (0.0, "0", "0"), (0.4, "1-99", "1-10"), (10.0, "1-99", "1-10"), (10.5, "1-99", "11-100"),
    (99.9, "1-99", "11-100"), (100.0, "100-399", "11-100"), (100.1, "100-399", "101-400"),
    (399.9, "100-399", "101-400"), (400.0, ">=400", "101-400"), (400.1, ">=400", ">400"),
])
def test_risk_categories(value, paper, five):
    assert risk_category(value, "paper") == paper
    assert risk_category(value, "five") == five


def test_risk_category_rejects_negative_and_unknown_scheme():
    with pytest.raises(ValueError, match="non-negative"):
        risk_category(-1.0)
    with pytest.raises(ValueError, match="scheme"):
        risk_category(1.0, "seven")  # type: ignore[arg-type]


@pytest.mark.parametrize(("vessels", "expected"), [
    ({}, "A0"),
    ({"LAD": 50.0}, "A1/N1"),
    ({"LM": 5.0, "LAD": 95.0}, "A2/N2"),  # 100 exactly is A2; the left main is a vessel
    ({"LM": 1.0, "LAD": 100.0, "LCX": 100.0, "RCA": 98.0}, "A2/N4"),
    ({"LAD": 200.0, "RCA": 100.0}, "A3/N2"),
    ({"TAC": 500.0}, "A0"),  # aortic calcium is not coronary
])
def test_cac_drs(vessels, expected):
    assert cac_drs(vessels) == expected


def test_study_features():
    hu = np.zeros((1, 10, 10), np.int16)
    labels = np.zeros_like(hu, dtype=np.uint8)
    hu[0, 0, 0:2], labels[0, 0, 0:2] = 450, 1  # LM: 2 mm^2 x 4 = 8
    hu[0, 5, 0:3], labels[0, 5, 0:3] = 250, 2  # LAD: 3 mm^2 x 2 = 6
    hu[0, 8, 5:7], labels[0, 8, 5:7] = 300, 2  # second LAD lesion: 2 x 3 = 6
    hu[0, 9, 9], labels[0, 9, 9] = 150, 5  # TAC: 1
    features = study_features(score(hu, labels, (3, 1, 1)))
    assert features.cac_agatston == 20.0 and features.ac_agatston == 1.0
    assert features.cac_drs == "A1/N2"
    assert (features.risk_category_paper, features.risk_category_five) == ("1-99", "11-100")
    assert features.n_calcified_vessels == 2
    assert (features.lm_lesions, features.lad_lesions, features.lcx_lesions) == (1, 2, 0)
    assert features.lm_share_of_cac == 8.0 / 20.0
    assert not features.metal_suspected


def test_measure_c_ha_by_hand():
    hu = np.zeros((2, 4, 4))
    rod = np.zeros(hu.shape, bool)
    water = np.zeros(hu.shape, bool)
    hu[:, 0, 0], rod[:, 0, 0] = 310.0, True
    hu[:, 3, 3], water[:, 3, 3] = 10.0, True
    assert measure_c_ha(hu, rod, water, rod_density_mg_cm3=200) == 200 / 300
    with pytest.raises(ScoringInputError, match="water_mask"):
        measure_c_ha(hu, rod, np.zeros(hu.shape, bool))
    with pytest.raises(ScoringInputError, match="denser"):
        measure_c_ha(hu, water, rod)


def test_registry_lookup_prefers_the_most_specific_entry(tmp_path):
    registry_file = tmp_path / "cal.toml"
    registry_file.write_text(
        '[[scanner]]\nmanufacturer = "ACME"\nc_ha = 0.70\n'
        '[[scanner]]\nmanufacturer = "ACME"\nmodel = "X1"\nkvp = 120\nc_ha = 0.75\n'
        '[[scanner]]\nmanufacturer = "ACME"\nmodel = "X1"\nkvp = 100\nc_ha = 0.80\n'
    )
    registry = load_registry(registry_file)
    def find(**kw):
        hit = lookup_c_ha(registry, **{"manufacturer": "acme", "model": "X1", "kvp": 120.0,
                                       "kernel": "B35f", **kw})
        return hit.c_ha if hit else None
    assert find() == 0.75
    assert find(kvp=100.0) == 0.80
    assert find(kvp=80.0) == 0.70  # falls back to the manufacturer-wide entry
    assert find(manufacturer="Other") is None
    shipped = lookup_c_ha(load_registry(), manufacturer="TOSHIBA", model="Aquilion ONE",
                          kvp=120.0, kernel="FC12")
    assert shipped is not None and shipped.c_ha == 0.722048
    bad = tmp_path / "bad.toml"
    bad.write_text('[[scanner]]\nmanufacturer = "ACME"\n')
    with pytest.raises(ScoringInputError, match="c_ha"):
        load_registry(bad)


def test_documented_profile_table_matches_the_engine():
    from pathlib import Path

    from calcpipe.scoring.comparison import comparison_table

    doc = (Path(__file__).resolve().parents[1] / "docs" / "scoring.md").read_text()
    assert comparison_table() in doc


def test_profiles_command_prints_every_profile():
    from typer.testing import CliRunner

    from calcpipe.cli import app
    from calcpipe.scoring import PROFILES

    output = CliRunner().invoke(app, ["profiles"]).output
    assert all(f"| {name} |" in output for name in PROFILES)
