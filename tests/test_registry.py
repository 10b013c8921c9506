"""The claims table (`mulreg.results.registry`): each registration's hypothesis table names the ids it
holds with the same direction, and the analyses and the ledger produce exactly its rows, in its words."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from mulreg.config import PROJECT_ROOT
from mulreg.results import claims, ledger, registry, replication
from test_replication import confirmation_runs, selection_runs

REGISTRATIONS = {1: "docs/PREREGISTRATION.md", 2: "docs/PREREGISTRATION-2.md", 3: "docs/PREREGISTRATION-3.md"}
# a hypothesis row: ids | claim | statistic | direction
ROW = re.compile(r"^\| ([BD]\d+(?:, [BD]\d+)*) \|(.*)\| ([<>] 0) \|$")


def registered_rows(path: str) -> dict[str, str]:
    """id → direction, from the hypothesis table of a registration."""
    out = {}
    for line in (PROJECT_ROOT / path).read_text().splitlines():
        hit = ROW.match(line.strip())
        if hit:
            out |= {hid: hit.group(3) for hid in hit.group(1).split(", ")}
    return out


@pytest.mark.parametrize("number", [2, 3])
def test_each_registrations_table_names_the_ids_and_directions_of_the_claims_table(number):
    table = registry.claims()
    rows = registered_rows(REGISTRATIONS[number])
    assert set(rows) == {i for i in registry.registered_in(number) if table.at[i, "family"] != "A"}
    assert all(table.at[hid, "direction"] == direction for hid, direction in rows.items())


def test_each_claims_units_are_points_exactly_where_its_statistic_is_an_accuracy_or_a_fit():
    table = registry.claims()
    in_points = table["statistic"].str.contains("accuracy|fit|\\[mul − ", regex=True)
    assert (table["units"] == registry.POINTS).eq(in_points).all()
    assert registry.units("B7") == "ranks" and registry.units("D1") == "epochs" and registry.units(None) == "pp"


def test_a_thin_rows_differences_are_listed_in_its_claims_units():
    thin = [claims.test([254.0, 250.0]) | {"id": "B8"}, claims.test([0.02, 0.05]) | {"id": "B5"}]
    outcomes = claims.decide(pd.DataFrame(thin))["outcome"].tolist()
    assert outcomes == ["not resolved (2 pairs: +254, +250 ranks)", "not resolved (2 pairs: +2.00, +5.00 pp)"]


def test_family_a_is_registered_by_all_three_with_six_claims():
    assert "m = 6" in (PROJECT_ROOT / REGISTRATIONS[3]).read_text()
    assert all(set(registry.family("A").index) <= set(registry.registered_in(n)) for n in REGISTRATIONS)


def test_family_a_is_what_both_registrations_test_and_what_the_analysis_produces():
    """Registration 1 tests H1, H2 at noise 0 and 0.2 and their growth (m = 6); registration 2 repeats it."""
    text = (PROJECT_ROOT / REGISTRATIONS[1]).read_text()
    assert "six hypotheses" in text and "H1(ν): multiplicative > additive" in text
    family_a = registry.family("A")
    assert registry.registered_in(1) == list(family_a.index) and set(family_a.index) <= set(registry.registered_in(2))
    rng = np.random.default_rng(0)
    runs = pd.DataFrame([{"penalty": p, "label_noise": v, "seed": s, "test_acc_best_val": rng.uniform(0.7, 0.9),
                          "stop_reason": "after_escape", "key": f"{p}{v}{s}"}
                         for p in ("none", "sum", "mul") for v in (0.0, 0.2) for s in range(5)])
    produced = claims.claims(runs, rules=["test_acc_best_val"], confirmed=True)
    assert sorted(zip(produced["claim"], produced["noise"])) == sorted(zip(family_a["claim"], family_a["noise"]))
    assert ledger.FIG1 == list(zip(family_a["claim"], family_a["noise"]))


def test_family_b_and_the_ledger_read_each_claim_in_the_tables_words():
    family = replication.family_b(confirmation_runs(), selection_runs([[True] * 4] * 3, [[False] * 4] * 3))
    expected = registry.family("B")
    assert family["id"].tolist() == list(expected.index)
    assert family["claim"].tolist() == expected["claim"].tolist()
    assert family["noise"].tolist() == expected["noise"].tolist()
    assert replication.PAPER_B == {"B1": 1.0, "B2": 1.0, "B3": 1.0, "B4": 1.0, "B7": 81.0, "B8": 254.0}
    rows = ledger.family_b_rows(None, None, "`make figures NB=07`")
    assert [r["claim"] for r in rows] == [registry.label(i) for i in expected.index]
    assert [r["where"] for r in rows] == expected["where"].tolist()


def test_the_ledger_states_each_family_b_number_in_its_claims_units():
    family = replication.family_b(confirmation_runs(), selection_runs([[True] * 4] * 3, [[False] * 4] * 3))
    cells = {r["claim"].split(":")[0]: r["replication 2"] for r in ledger.family_b_rows(family, None, "")}
    b5 = family.set_index("id").loc["B5"]
    assert f"{100 * b5['mean']:+.3g} pp [" in cells["B5"]  # a fit: in points, as every accuracy is
    assert " decades [" in cells["B1"] and " ranks [" in cells["B7"]
