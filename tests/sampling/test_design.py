"""Sample size, allocation and reserve sizes (services/sampling/design.py)."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest

from services.sampling.design import (
    DesignError,
    StratumPlan,
    StratumSpec,
    allocate,
    plan_strata,
    required_sample_size,
    reserve_size,
    reserve_sizes,
    size_per_stratum,
    total_of,
    z_value,
)

# --------------------------------------------------------------------------------------------
# sample size


def test_z_value_is_the_normal_quantile():
    assert z_value(0.95) == pytest.approx(1.959963984540054, abs=1e-12)
    assert z_value(0.99) == pytest.approx(2.5758293035489, abs=1e-9)
    assert z_value(0.90) == pytest.approx(1.6448536269514722, abs=1e-12)


def test_sample_size_hand_computed():
    # n0 = 1.959964² · 0.25 / 0.0025 = 384.146 → 385
    assert required_sample_size(0.05) == 385
    # FPC with N = 1000: 384.146 / (1 + 383.146/1000) = 277.73 → 278
    assert required_sample_size(0.05, population=1000) == 278
    # the FPC uses n0 − 1: N = 60 gives 384.146 / (1 + 383.146/60) = 52.01 → 53 (n0/N would give 52)
    assert required_sample_size(0.05, population=60) == 53
    # e = 0.03: 1067.07 → 1068
    assert required_sample_size(0.03) == 1068
    # 99%: 2.575829² · 0.25 / 0.0025 = 663.49 → 664
    assert required_sample_size(0.05, confidence=0.99) == 664
    # p = 0.8: 1.959964² · 0.16 / 0.0025 = 245.85 → 246
    assert required_sample_size(0.05, p=0.8) == 246


def test_sample_size_design_effect_and_response_rate():
    # deff 1.5: 576.22 → 577
    assert required_sample_size(0.05, design_effect=1.5) == 577
    # response 0.8: 384.146 / 0.8 = 480.18 → 481
    assert required_sample_size(0.05, response_rate=0.8) == 481
    # all together, in the documented order: ×deff, FPC, ÷rr
    n0 = 1.959963984540054**2 * 0.25 / 0.05**2 * 2.0
    n = n0 / (1 + (n0 - 1) / 5000) / 0.7
    assert required_sample_size(0.05, population=5000, design_effect=2.0, response_rate=0.7) == math.ceil(n)


def test_sample_size_never_exceeds_population():
    # FPC gives 79.5, ÷0.5 → 159 > 100 → the whole stratum
    assert required_sample_size(0.05, population=100, response_rate=0.5) == 100
    assert required_sample_size(0.05, population=1) == 1
    assert required_sample_size(0.01, population=50) <= 50


@pytest.mark.parametrize(
    "kwargs",
    [
        {"margin": 0},
        {"margin": -0.05},
        {"margin": 1.5},
        {"margin": float("nan")},
        {"margin": 0.05, "confidence": 0},
        {"margin": 0.05, "confidence": 1},
        {"margin": 0.05, "confidence": 95},
        {"margin": 0.05, "p": 0},
        {"margin": 0.05, "p": 1},
        {"margin": 0.05, "population": 0},
        {"margin": 0.05, "population": 10.5},
        {"margin": 0.05, "design_effect": 0},
        {"margin": 0.05, "response_rate": 0},
        {"margin": 0.05, "response_rate": 1.2},
        {"margin": "5%"},
    ],
)
def test_sample_size_rejects_impossible_requests(kwargs):
    with pytest.raises(DesignError):
        required_sample_size(**kwargs)


# --------------------------------------------------------------------------------------------
# allocation


def S(key, n, p=None):
    return StratumSpec(key, n, p)


def test_proportional_exact_case():
    strata = [S("a", 100), S("b", 200), S("c", 700)]
    assert allocate(strata, 100, "proportional") == {"a": 10, "b": 20, "c": 70}


def test_largest_remainder_tie_break_by_key_not_by_input_order():
    strata = [S("c", 1), S("a", 1), S("b", 1)]
    out = allocate(strata, 2, "proportional")
    assert out == {"c": 0, "a": 1, "b": 1}
    assert list(out) == ["c", "a", "b"]  # follows the input order


def test_largest_remainder_prefers_larger_remainder():
    # shares 3.6, 3.3, 3.1 of 10 → floors 3,3,3, one left → a (0.6)
    strata = [S("a", 36), S("b", 33), S("c", 31)]
    assert allocate(strata, 10) == {"a": 4, "b": 3, "c": 3}


def test_equal_allocation_caps_and_redistributes():
    strata = [S("big1", 1000), S("small", 10), S("big2", 1000)]
    out = allocate(strata, 300, "equal")
    assert out == {"big1": 145, "small": 10, "big2": 145}


def test_minimum_is_honoured_and_others_stay_proportional():
    strata = [S("a", 1000), S("b", 100), S("c", 10), S("d", 5000)]
    out = allocate(strata, 600, "proportional", minimum=50)
    assert sum(out.values()) == 600
    assert out["b"] == 50  # raised to the minimum
    assert out["c"] == 10  # minimum above N_h: the whole stratum
    assert out["a"] * 5 == out["d"]  # unconstrained strata keep the 1 : 5 ratio
    assert out == {"a": 90, "b": 50, "c": 10, "d": 450}


def test_neyman_allocation():
    # S_h = 0.5 and 0.3 with equal N_h → 50 : 30
    strata = [S("a", 1000, 0.5), S("b", 1000, 0.9)]
    assert allocate(strata, 80, "neyman") == {"a": 50, "b": 30}


def test_neyman_over_allocation_is_capped():
    # unconstrained Neyman would give "small" more than it holds
    # weights 40·0.5 = 20 and 1000·√(0.001·0.999) ≈ 31.6: "small" would get 200·20/51.6 ≈ 77.5 > 40
    strata = [S("small", 40, 0.5), S("big", 1000, 0.001)]
    out = allocate(strata, 200, "neyman")
    assert out == {"small": 40, "big": 160}


def test_neyman_needs_p():
    with pytest.raises(DesignError, match="neyman"):
        allocate([S("a", 10, 0.5), S("b", 10)], 5, "neyman")


def test_allocation_of_the_whole_frame_is_a_census():
    strata = [S("a", 7), S("b", 3), S("c", 11)]
    for method in ("proportional", "equal"):
        assert allocate(strata, 21, method) == {"a": 7, "b": 3, "c": 11}


def test_allocation_zero_total_and_empty_strata():
    assert allocate([S("a", 10), S("b", 0)], 0) == {"a": 0, "b": 0}
    assert allocate([S("a", 10), S("b", 0)], 4, "equal", minimum=2) == {"a": 4, "b": 0}


@pytest.mark.parametrize(
    ("strata", "total", "method", "minimum", "match"),
    [
        ([S("a", 10), S("b", 10)], 21, "proportional", 0, "exceeds the frame"),
        ([S("a", 10), S("b", 10), S("c", 10)], 20, "proportional", 7, "minimum"),
        ([S("a", 10)], 5, "optimal", 0, "unknown allocation method"),
        ([S("a", 10), S("a", 5)], 5, "proportional", 0, "duplicate"),
        ([S("a", 10)], -1, "proportional", 0, "non-negative"),
        ([S("a", 10)], 5, "proportional", -1, "non-negative"),
        ([S("a", -3)], 0, "proportional", 0, "negative"),
        ([], 0, "proportional", 0, "at least one"),
        ([S("a", 10, 0.0), S("b", 10, 1.0)], 5, "neyman", 0, "cannot place"),
    ],
)
def test_allocation_errors(strata, total, method, minimum, match):
    with pytest.raises(DesignError, match=match):
        allocate(strata, total, method, minimum)


def test_allocation_properties_on_random_designs():
    rnd = random.Random(2026)
    for _ in range(300):
        h = rnd.randint(1, 25)
        strata = [S(f"k{i:02d}", rnd.choice([0, 1, 3, 10, 50, 400, 5000]), rnd.uniform(0.05, 0.95)) for i in range(h)]
        cap = sum(s.population for s in strata)
        total = rnd.randint(0, cap)
        minimum = rnd.randint(0, 30)
        method = rnd.choice(["proportional", "equal", "neyman"])
        lo = [min(minimum, s.population) for s in strata]
        if sum(lo) > total:
            with pytest.raises(DesignError):
                allocate(strata, total, method, minimum)
            continue
        try:
            out = allocate(strata, total, method, minimum)
        except DesignError as exc:  # neyman can only fail when all growable weights are 0
            assert "cannot place" in str(exc)
            continue
        assert sum(out.values()) == total
        for s, m in zip(strata, lo):
            assert m <= out[s.key] <= s.population
        # deterministic
        assert allocate(list(reversed(strata)), total, method, minimum) == out


def test_proportional_without_binding_bounds_is_within_one_of_exact_share():
    strata = [S("a", 12345), S("b", 6789), S("c", 1011), S("d", 99)]
    total = 1000
    out = allocate(strata, total)
    big_n = sum(s.population for s in strata)
    for s in strata:
        assert abs(out[s.key] - Fraction(total * s.population, big_n)) < 1


# --------------------------------------------------------------------------------------------
# per-stratum sizes, reserves, plans


def test_size_per_stratum():
    strata = [S("a", 1000), S("b", 10), S("c", 100_000, 0.9), S("d", 0)]
    out = size_per_stratum(strata, 0.05)
    assert out["a"] == 278
    assert out["b"] == 10  # whole stratum
    assert out["c"] == required_sample_size(0.05, p=0.9, population=100_000)
    assert out["d"] == 0
    assert size_per_stratum(strata, 0.05, minimum=300)["a"] == 300


def test_reserve_size():
    assert reserve_size(10, 100) == 5
    assert reserve_size(7, 100) == 4  # ceil(3.5)
    assert reserve_size(10, 12) == 2  # capped by N − n
    assert reserve_size(10, 10) == 0
    assert reserve_size(30, 100, 0.1) == 3  # not 4 from 0.1·30 = 3.0000000000000004
    assert reserve_size(0, 100) == 0
    assert reserve_size(10, 100, 0) == 0
    with pytest.raises(DesignError):
        reserve_size(11, 10)
    with pytest.raises(DesignError):
        reserve_size(5, 10, -0.5)


def test_reserve_sizes_and_plan():
    strata = [S("a", 1000), S("b", 30), S("c", 10)]
    sizes = allocate(strata, 40, "equal", minimum=5)
    assert sizes == {"a": 15, "b": 15, "c": 10}
    assert reserve_sizes(strata, sizes) == {"a": 8, "b": 8, "c": 0}
    plan = plan_strata(strata, sizes)
    assert plan[0] == StratumPlan("a", 1000, 15, 8)
    assert plan[0].pi == 15 / 1000
    assert total_of(plan) == (40, 16)
    with pytest.raises(DesignError, match="no sample size"):
        reserve_sizes(strata, {"a": 1})
