"""The design-based estimator: R's numbers, an independent brute-force variance, and edge cases.

The brute-force reference below is deliberately naive (dicts and Python loops, one row at a time,
straight from the textbook formula), so that it shares no code or vectorisation trick with
services/indexing/estimation.py.
"""

from __future__ import annotations

import io
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from services.indexing import estimation
from services.indexing.estimation import (
    BLANK,
    NOT_APPLICABLE,
    Design,
    EstimationInputError,
    Responses,
    SampleDesign,
    composite_indices,
    estimate,
    linear_combination,
    ratio_estimates,
    read_design_json,
    read_responses_csv,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "estimation-check"
INDEX_TOL = 1e-9  # index points, as promised by the fixture's README
SE_TOL = 1e-6


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def brute_force(y, a, w, strata, psu, fpc=None, domain=None, lonely="adjust"):
    """Textbook Taylor-linearised covariance of ratios Σwy/Σwa, one loop at a time.

    Full-design domain estimation: z = 0 outside the domain, every sampled PSU of a stratum counts
    in n_h.  Lone PSUs: "adjust" centres at the grand mean of PSU totals, "certainty" drops them.
    """
    n, k = len(w), len(y[0])
    domain = [True] * n if domain is None else list(domain)
    Y = [0.0] * k
    X = [0.0] * k
    for i in range(n):
        if domain[i]:
            for c in range(k):
                Y[c] += w[i] * y[i][c]
                X[c] += w[i] * a[i][c]
    R = [Y[c] / X[c] for c in range(k)]
    psu_tot: dict = {}
    psus_of: dict = {}
    for i in range(n):
        key = (strata[i], psu[i])
        psus_of.setdefault(strata[i], set()).add(key)
        tot = psu_tot.setdefault(key, [0.0] * k)
        if domain[i]:
            for c in range(k):
                tot[c] += w[i] * (y[i][c] - R[c] * a[i][c]) / X[c]
    all_keys = list(psu_tot)
    grand = [sum(psu_tot[key][c] for key in all_keys) / len(all_keys) for c in range(k)]
    V = [[0.0] * k for _ in range(k)]
    for h, keys in psus_of.items():
        nh = len(keys)
        f = 0.0
        if fpc is not None:
            f = nh / next(fpc[i] for i in range(n) if strata[i] == h)
        if nh == 1:
            if lonely == "certainty":
                continue
            centre = grand
            factor = 1.0 - f
        else:
            centre = [sum(psu_tot[key][c] for key in keys) / nh for c in range(k)]
            factor = (1.0 - f) * nh / (nh - 1)
        for key in keys:
            d = [psu_tot[key][c] - centre[c] for c in range(k)]
            for r in range(k):
                for s in range(k):
                    V[r][s] += factor * d[r] * d[s]
    return np.array(R), np.array(V)


def clustered_sample(seed=7, n_psu=(6, 5), size=(3, 7), k=3, icc=True):
    """Two strata of villages (PSUs), people within them; answers correlated within a village."""
    rng = np.random.default_rng(seed)
    strata, psu, rows_y, rows_a, w, fpc = [], [], [], [], [], []
    for h, (npsu, N) in enumerate(zip(n_psu, (40, 25))):
        for j in range(npsu):
            village_p = rng.uniform(0.2, 0.95) if icc else 0.6
            for _ in range(rng.integers(size[0], size[1] + 1)):
                answered = rng.random(k) < 0.85
                sat = (rng.random(k) < village_p) & answered
                strata.append(f"S{h}")
                psu.append(f"v{j}")  # the same label in both strata: nested, distinct PSUs
                rows_y.append(sat.astype(float))
                rows_a.append(answered.astype(float))
                w.append(rng.uniform(5, 30))
                fpc.append(N)
    return (np.array(rows_y), np.array(rows_a), np.array(w), np.array(strata, dtype=object),
            np.array(psu, dtype=object), np.array(fpc, dtype=float))


def walk_numbers(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk_numbers(value, f"{path}/{key}")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path, node
    elif isinstance(node, str):
        return
    else:
        raise AssertionError(f"unexpected value at {path}: {node!r}")


def lookup(tree, path):
    node = tree
    for part in path.strip("/").split("/"):
        node = node[part]
    return node


def shape(node):
    """Key structure of a result (leaf values replaced by None)."""
    if isinstance(node, dict):
        return {k: shape(v) for k, v in node.items() if k != "r_survey_version"}
    return None


@pytest.fixture(scope="module")
def fixture_result():
    design = read_design_json(FIXTURE / "design.json")
    responses = read_responses_csv(FIXTURE / "responses.csv", design.items)
    return estimate(responses, design)


@pytest.fixture(scope="module")
def expected():
    return json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------
# R's survey package, number for number
# --------------------------------------------------------------------------------------------------


def test_fixture_shape_matches_expected(fixture_result, expected):
    assert shape(fixture_result) == shape(expected)


def test_fixture_every_number_matches_r(fixture_result, expected):
    checked = 0
    failures = []
    for path, want in walk_numbers(expected):
        got = lookup(fixture_result, path)
        tol = SE_TOL if path.endswith("/se") else INDEX_TOL
        if got is None or not math.isclose(got, want, rel_tol=0.0, abs_tol=tol):
            failures.append(f"{path}: expected {want}, got {got}")
        checked += 1
    assert not failures, "\n".join(failures)
    # national + 3 provinces × (9 items + 3 elements + overall) × (index, se), unweighted
    # pooled + 3 provinces × 13 values, and the national mean of provinces.
    assert checked == 4 * 13 * 2 + 4 * 13 + 1


def test_fixture_result_is_strict_json(fixture_result):
    json.dumps(fixture_result, allow_nan=False)


def test_fixture_matches_r_in_both_estimator_modes_and_on_threads(estimator_mode, expected):
    design = read_design_json(FIXTURE / "design.json")
    responses = read_responses_csv(FIXTURE / "responses.csv", design.items)
    sample = SampleDesign(responses.stratum, responses.psu, responses.fpc, chunk_rows=7, workers=3)
    got = sample.ratio_estimates(
        np.isin(responses.answers, design.satisfied), responses.answers >= 1, responses.weight)
    result = estimate(responses, design)
    for path, want in walk_numbers(expected):
        tol = SE_TOL if path.endswith("/se") else INDEX_TOL
        assert math.isclose(lookup(result, path), want, rel_tol=0.0, abs_tol=tol), path
    # the national item ratios through the chunked, threaded path agree with the table
    for j, c in enumerate(design.items):
        assert 100 * got.ratio[j] == pytest.approx(expected["national"]["items"][c]["index"], abs=INDEX_TOL)
        assert 100 * got.se[j] == pytest.approx(expected["national"]["items"][c]["se"], abs=SE_TOL)


@pytest.mark.parametrize(("chunk_rows", "piece_rows"), [(5, 1 << 13), (1 << 19, 1 << 13), (1 << 19, 7), (64, 3)])
def test_many_small_and_some_large_single_stage_domains_match_brute_force(chunk_rows, piece_rows, estimator_mode):
    # Single-stage rows, 40 domains of 1 to ~60 rows (short and long runs, chunks cutting
    # domains), a fully enumerated stratum (scale 0) and a stratum with one respondent.  Small
    # pieces cut domains within a chunk (their Gram matrices are summed back per domain).
    rng = np.random.default_rng(3)
    n, k = 400, 3
    strata = rng.choice(["A", "B", "C"], size=n, p=[0.5, 0.45, 0.05]).astype(object)
    strata[0] = "L"  # lonely
    sizes = {"A": 10_000, "B": int((strata == "B").sum()), "C": 300, "L": 50}  # B: census
    fpc = np.array([sizes[s] for s in strata], dtype=float)
    domain = np.minimum(rng.geometric(0.08, size=n), 40)
    a = rng.random((n, k)) < 0.9
    y = a & (rng.random((n, k)) < 0.6)
    w = rng.uniform(1, 30, n)
    sample = SampleDesign(strata, None, fpc, chunk_rows=chunk_rows, workers=2, piece_rows=piece_rows)
    got = sample.domain_ratios(y, a, w, domain)
    # the run's three estimates at once: design weights, unit weights, and the simple random
    # sample reference of the design effect (one stratum, no fpc, unit weights)
    yt, at = np.ascontiguousarray(y.T), np.ascontiguousarray(a.T)
    codes = domain - 1
    design_w, unit, srs = sample._estimate(lambda rows: (np.take(yt, rows, axis=1), np.take(at, rows, axis=1)),
                                           k, [w, None], codes, n_domains=40, srs=True)
    ones = [1.0] * n
    for d in (1, 2, 7, 25, 40):
        in_d = domain == d
        _, V = brute_force(y.astype(float).tolist(), a.astype(float).tolist(), w.tolist(), strata,
                           list(range(n)), fpc, domain=in_d)
        np.testing.assert_allclose(got[d].cov, V, rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(design_w.cov[d - 1], V, rtol=1e-10, atol=1e-15)
        _, V1 = brute_force(y.astype(float).tolist(), a.astype(float).tolist(), ones, strata, list(range(n)), fpc,
                            domain=in_d)
        np.testing.assert_allclose(unit.cov[d - 1], V1, rtol=1e-10, atol=1e-15)
        _, V_srs = brute_force(y.astype(float).tolist(), a.astype(float).tolist(), ones, ["all"] * n,
                               list(range(n)), None, domain=in_d)
        np.testing.assert_allclose(srs.cov[d - 1], V_srs, rtol=1e-10, atol=1e-15)


# --------------------------------------------------------------------------------------------------
# Variance under the design: independent checks
# --------------------------------------------------------------------------------------------------


def test_hand_computed_single_stage_example():
    """The worked example of docs/method/estimation.md, recomputed in exact fractions."""
    # stratum A (N=20): answers 5, 4, 2, blank with w=5; stratum B (N=30): 4, 3, na with w=10
    y = [1, 1, 0, 0, 1, 0, 0]
    a = [1, 1, 1, 0, 1, 1, 0]
    w = [5, 5, 5, 5, 10, 10, 10]
    strata = ["A"] * 4 + ["B"] * 3
    fpc = [20] * 4 + [30] * 3
    R = Fraction(20, 35)
    z = [Fraction(w[i]) * (y[i] - R * a[i]) / 35 for i in range(7)]
    var = Fraction(0)
    for members, N in (([0, 1, 2, 3], 20), ([4, 5, 6], 30)):
        nh = len(members)
        mean = sum(z[i] for i in members) / nh
        var += (1 - Fraction(nh, N)) * Fraction(nh, nh - 1) * sum((z[i] - mean) ** 2 for i in members)
    est = ratio_estimates(np.array(y, float), np.array(a, float), np.array(w, float), strata, None, fpc)
    assert est.ratio[0] == pytest.approx(float(R), abs=1e-15)
    assert est.cov[0, 0] == pytest.approx(float(var), rel=1e-12)
    assert 100 * est.se[0] == pytest.approx(26.4835, abs=1e-4)  # as printed in the docs


@pytest.fixture(params=["one pass", "two passes", "two passes, rows read twice"])
def estimator_mode(request, monkeypatch):
    """The estimator's strategies: one pass with Gram matrices of [Y; X] (national files,
    large domains) and two passes with Gram matrices of z, with y, a kept between the passes
    (a wave) or read again (many small domains in a large file)."""
    monkeypatch.setattr(estimation, "_ONE_PASS_ROWS", 0 if request.param == "one pass" else 10**12)
    if request.param != "two passes":
        monkeypatch.setattr(estimation, "_CACHE_BYTES", 0)
    return request.param


@pytest.mark.parametrize(("chunk_rows", "workers"), [(3, 1), (3, 3), (1 << 19, 1), (1 << 19, 2)])
def test_clustered_design_matches_brute_force(chunk_rows, workers, estimator_mode):
    # chunk_rows = 3 is the national-size path: many chunks, a domain spread over several of
    # them, chunks worked on by several threads and summed in order
    y, a, w, strata, psu, fpc = clustered_sample()
    design = SampleDesign(strata, psu, fpc, chunk_rows=chunk_rows, workers=workers)
    got = design.ratio_estimates(y, a, w)
    R, V = brute_force(y.tolist(), a.tolist(), w.tolist(), strata, psu, fpc)
    np.testing.assert_allclose(got.ratio, R, rtol=1e-13)
    np.testing.assert_allclose(got.cov, V, rtol=1e-11, atol=1e-16)


def test_clustering_changes_the_se_and_is_not_ignored():
    y, a, w, strata, psu, _ = clustered_sample(icc=True)
    # no fpc here: the villages' N_h would be no population size for people
    clustered = ratio_estimates(y, a, w, strata, psu)
    per_person = ratio_estimates(y, a, w, strata)
    # Same point estimates, different variance: villages answer alike, so clusters carry less
    # information than as many independent people.
    np.testing.assert_allclose(clustered.ratio, per_person.ratio, rtol=1e-14)
    assert np.all(np.abs(clustered.se - per_person.se) > 1e-4)
    assert clustered.se.mean() > per_person.se.mean()
    # ... and each agrees with the brute force under its own design.
    _, V = brute_force(y.tolist(), a.tolist(), w.tolist(), strata, list(range(len(w))))
    np.testing.assert_allclose(per_person.cov, V, rtol=1e-11, atol=1e-16)
    _, V = brute_force(y.tolist(), a.tolist(), w.tolist(), strata, psu)
    np.testing.assert_allclose(clustered.cov, V, rtol=1e-11, atol=1e-16)


def test_fpc_lowers_the_se_by_sqrt_one_minus_f_in_one_stratum():
    y, a, w, strata, psu, _ = clustered_sample()
    one = np.array(["S"] * len(w), dtype=object)
    psu_in_one = np.array([f"{s}-{p}" for s, p in zip(strata, psu)], dtype=object)
    n_psu = len(set(psu_in_one))
    N = 4 * n_psu
    without = ratio_estimates(y, a, w, one, psu_in_one, None)
    with_fpc = ratio_estimates(y, a, w, one, psu_in_one, np.full(len(w), N))
    assert np.all(with_fpc.se < without.se)
    np.testing.assert_allclose(with_fpc.se, without.se * math.sqrt(1 - n_psu / N), rtol=1e-12)


def test_stratum_fully_enumerated_adds_no_variance(estimator_mode):
    y, a, w, strata, psu, fpc = clustered_sample()
    n0 = len({p for s, p in zip(strata, psu) if s == "S0"})
    census = np.where(strata == "S0", n0, fpc)  # N_h = n_h in S0: f = 1
    got = ratio_estimates(y, a, w, strata, psu, census)
    _, V = brute_force(y.tolist(), a.tolist(), w.tolist(), strata, psu, census)
    np.testing.assert_allclose(got.cov, V, rtol=1e-11, atol=1e-16)


def test_domain_uses_the_full_design_not_a_subset():
    y, a, w, strata, psu, fpc = clustered_sample(seed=11)
    rng = np.random.default_rng(3)
    # a domain cutting across PSUs (e.g. women), and absent from two villages entirely
    domain = rng.random(len(w)) < 0.5
    domain[(strata == "S1") & np.isin(psu, ["v0", "v1"])] = False
    got = ratio_estimates(y, a, w, strata, psu, fpc, domain_mask=domain)
    R, V = brute_force(y.tolist(), a.tolist(), w.tolist(), strata, psu, fpc, domain=domain)
    np.testing.assert_allclose(got.ratio, R, rtol=1e-13)
    np.testing.assert_allclose(got.cov, V, rtol=1e-11, atol=1e-16)
    # Subsetting the data first (n_h = PSUs with domain members) is a different, wrong answer.
    naive = ratio_estimates(y[domain], a[domain], w[domain], strata[domain], psu[domain], fpc[domain])
    np.testing.assert_allclose(naive.ratio, got.ratio, rtol=1e-13)
    assert not np.allclose(naive.se, got.se, rtol=1e-6)


def test_domain_ratios_agree_with_one_domain_at_a_time(estimator_mode):
    y, a, w, strata, psu, fpc = clustered_sample(seed=5)
    rng = np.random.default_rng(1)
    group = rng.choice(["f", "m", "x"], size=len(w))
    design = SampleDesign(strata, psu, fpc, chunk_rows=4)
    together = design.domain_ratios(y, a, w, group)
    assert set(together) == {"f", "m", "x"}
    for label, est in together.items():
        alone = design.ratio_estimates(y, a, w, domain_mask=group == label)
        np.testing.assert_allclose(est.cov, alone.cov, rtol=1e-12, atol=1e-18)
        _, V = brute_force(y.tolist(), a.tolist(), w.tolist(), strata, psu, fpc, domain=group == label)
        np.testing.assert_allclose(est.cov, V, rtol=1e-11, atol=1e-16)


@pytest.mark.parametrize("rule", ["adjust", "certainty"])
def test_lonely_psu_rules_match_brute_force(rule, estimator_mode):
    y, a, w, strata, psu, fpc = clustered_sample(seed=2)
    strata = strata.copy()
    lone = (strata == "S1") & (psu == "v0")
    strata[lone] = "S2"  # a stratum holding a single village
    fpc = np.where(lone, 9, fpc)
    got = ratio_estimates(y, a, w, strata, psu, fpc, lonely_psu=rule)
    _, V = brute_force(y.tolist(), a.tolist(), w.tolist(), strata, psu, fpc, lonely=rule)
    np.testing.assert_allclose(got.cov, V, rtol=1e-11, atol=1e-16)


def test_lonely_psu_adjust_is_conservative_and_fail_refuses():
    y, a, w, strata, psu, fpc = clustered_sample(seed=2)
    strata = strata.copy()
    strata[(strata == "S1") & (psu == "v0")] = "S2"
    adjust = ratio_estimates(y, a, w, strata, psu, None, lonely_psu="adjust")
    certainty = ratio_estimates(y, a, w, strata, psu, None, lonely_psu="certainty")
    assert np.all(adjust.se >= certainty.se)
    with pytest.raises(EstimationInputError, match="only one PSU"):
        ratio_estimates(y, a, w, strata, psu, None, lonely_psu="fail")


def test_weights_invariance():
    y, a, w, strata, psu, fpc = clustered_sample(seed=9)
    base = ratio_estimates(y, a, w, strata, psu, fpc)
    scaled = ratio_estimates(y, a, w * 37.25, strata, psu, fpc)
    np.testing.assert_allclose(scaled.ratio, base.ratio, rtol=1e-13)
    np.testing.assert_allclose(scaled.cov, base.cov, rtol=1e-11)


def test_weights_invariance_of_the_whole_table():
    design = read_design_json(FIXTURE / "design.json")
    r = read_responses_csv(FIXTURE / "responses.csv", design.items)
    scaled = Responses(items=r.items, answers=r.answers, weight=r.weight * 1e-3, stratum=r.stratum,
                       province=r.province, psu=r.psu, fpc=r.fpc)
    a, b = estimate(r, design), estimate(scaled, design)
    for path, value in walk_numbers(a):
        assert lookup(b, path) == pytest.approx(value, rel=1e-10), path


# --------------------------------------------------------------------------------------------------
# Composites
# --------------------------------------------------------------------------------------------------


def test_composite_se_uses_the_covariance_not_an_average_of_ses():
    y, a, w, strata, psu, fpc = clustered_sample(seed=4, k=4)
    est = ratio_estimates(y, a, w, strata, psu, fpc)
    R, V = brute_force(y.tolist(), a.tolist(), w.tolist(), strata, psu, fpc)
    design = Design(elements={"e1": ("i0", "i1"), "e2": ("i2", "i3")},
                    parts={"policy": ("e1",), "service": ("e2",)})
    out = composite_indices(est.ratio, est.cov, ["i0", "i1", "i2", "i3"], design)
    c1 = np.array([0.5, 0.5, 0, 0])
    c_all = np.array([0.25, 0.25, 0.25, 0.25])
    assert out["elements"]["e1"]["index"] == pytest.approx(100 * c1 @ R, rel=1e-13)
    assert out["elements"]["e1"]["se"] == pytest.approx(100 * math.sqrt(c1 @ V @ c1), rel=1e-10)
    # with parts, overall = mean of parts (each the mean of its elements)
    assert set(out) == {"items", "elements", "parts", "overall"}
    assert out["parts"]["policy"] == pytest.approx(out["elements"]["e1"])
    assert out["overall"]["index"] == pytest.approx(100 * c_all @ R, rel=1e-13)
    assert out["overall"]["se"] == pytest.approx(100 * math.sqrt(c_all @ V @ c_all), rel=1e-10)
    mean_se = np.mean([out["items"][c]["se"] for c in ("i0", "i1")])
    assert not math.isclose(out["elements"]["e1"]["se"], mean_se, rel_tol=1e-3)


def test_parts_average_elements_then_parts():
    design = Design(elements={"a": ("x",), "b": ("y",), "c": ("z",)}, parts={"p": ("a", "b"), "q": ("c",)})
    out = composite_indices(np.array([0.5, 0.7, 0.9]), None, ["x", "y", "z"], design)
    assert out["parts"] == {"p": pytest.approx(60.0), "q": pytest.approx(90.0)}
    assert out["overall"] == pytest.approx(75.0)  # not the mean of the three elements (70)


def test_linear_combination_ignores_unused_nan_columns():
    value, se = linear_combination([0.5, np.nan], [[0.01, np.nan], [np.nan, np.nan]], [1.0, 0.0])
    assert value == 0.5 and se == pytest.approx(0.1)


def _small_responses(answers, province, stratum=None, weight=None, psu=None, fpc=None):
    answers = np.array(answers, dtype=np.int8)
    n = answers.shape[0]
    return Responses(
        items=("q1", "q2", "q3"),
        answers=answers,
        weight=np.ones(n) if weight is None else np.asarray(weight, float),
        stratum=np.asarray(province if stratum is None else stratum, dtype=object),
        province=np.asarray(province, dtype=object),
        psu=psu,
        fpc=fpc,
    )


def test_item_nobody_answered_in_a_domain_is_none_not_nan():
    B, NA = BLANK, NOT_APPLICABLE
    responses = _small_responses(
        [[5, 4, 3], [4, 2, 5], [2, 5, 4],  # province 01
         [B, 4, 4], [NA, 1, 5], [B, 5, 2]],  # province 02: nobody answered q1
        ["01"] * 3 + ["02"] * 3,
        weight=[2, 3, 4, 1, 2, 3],
    )
    design = Design(elements={"e1": ("q1", "q2"), "e2": ("q3",)})
    out = estimate(responses, design)
    json.dumps(out, allow_nan=False)
    p2 = out["provinces"]["02"]
    assert p2["items"]["q1"] == {"index": None, "se": None}
    # the element falls back to its answered items; the overall index stays defined
    assert p2["elements"]["e1"] == pytest.approx(p2["items"]["q2"])
    assert p2["overall"]["index"] == pytest.approx((p2["items"]["q2"]["index"] + p2["items"]["q3"]["index"]) / 2)
    assert out["unweighted"]["provinces"]["02"]["items"]["q1"] is None
    assert out["unweighted"]["provinces"]["02"]["items"]["q2"] == pytest.approx(200 / 3)
    # national still has q1 from province 01
    assert out["national"]["items"]["q1"]["index"] == pytest.approx(100 * 5 / 9)


def test_element_with_no_answered_item_is_none():
    B = BLANK
    responses = _small_responses([[B, B, 4], [B, B, 5], [3, 4, 4], [4, 4, 1]], ["01", "01", "02", "02"])
    out = estimate(responses, Design(elements={"e1": ("q1", "q2"), "e2": ("q3",)}))
    p1 = out["provinces"]["01"]
    assert p1["elements"]["e1"] == {"index": None, "se": None}
    assert p1["overall"]["index"] == pytest.approx(100.0)
    assert out["unweighted"]["provinces"]["01"]["elements"]["e1"] is None
    assert out["unweighted"]["national_mean_of_provinces"] == pytest.approx((100.0 + (75.0 + 50.0) / 2) / 2)


def test_unweighted_figures_ignore_weights_and_average_provinces():
    responses = _small_responses([[5, 4, 3], [4, 2, 5], [1, 1, 1], [5, 5, 5]], ["01", "01", "02", "02"],
                                 weight=[1, 100, 3, 7])
    out = estimate(responses, Design(elements={"e": ("q1", "q2", "q3")}))
    un = out["unweighted"]
    assert un["national_pooled"]["items"]["q1"] == pytest.approx(75.0)
    assert un["provinces"]["01"]["overall"] == pytest.approx(100 * (1 + 0.5 + 0.5) / 3)
    assert un["provinces"]["02"]["overall"] == pytest.approx(50.0)
    assert un["national_mean_of_provinces"] == pytest.approx((un["provinces"]["01"]["overall"] + 50.0) / 2)
    assert out["national"]["items"]["q2"]["index"] == pytest.approx(100 * 8 / 111)


def test_clustered_flag_is_checked_against_the_data():
    responses = _small_responses([[5, 4, 3], [4, 2, 5], [1, 1, 1], [5, 5, 5]], ["01"] * 4,
                                 psu=np.array(["v1", "v1", "v2", "v2"], dtype=object))
    with pytest.raises(EstimationInputError, match="clustered"):
        estimate(responses, Design(elements={"e": ("q1",)}, clustered=False))
    no_psu = _small_responses([[5, 4, 3], [4, 2, 5]], ["01"] * 2)
    with pytest.raises(EstimationInputError, match="psu"):
        estimate(no_psu, Design(elements={"e": ("q1",)}, clustered=True))
    assert estimate(responses, Design(elements={"e": ("q1",)}, clustered=True))["national"]["items"]["q1"]


# --------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------

HEADER = "respondent_id,province,stratum,psu,fpc,weight,q1,q2\n"


def test_reader_tolerates_bom_blank_and_na():
    text = "\ufeff" + HEADER + "1,01,A,r1,100,2.5,5,\n2,01,A,r2,100,2.5,NA, 3 \n3,02,B,r3,100,1,na,1\n"
    for source in (io.StringIO(text), io.BytesIO(text.encode("utf-8"))):
        r = read_responses_csv(source, ["q1", "q2"])
        assert r.items == ("q1", "q2")
        assert r.answers.tolist() == [[5, BLANK], [NOT_APPLICABLE, 3], [NOT_APPLICABLE, 1]]
        assert r.weight.tolist() == [2.5, 2.5, 1.0]
        assert list(r.province) == ["01", "01", "02"]  # codes stay text: "01", not 1


def test_reader_infers_items_without_a_list_and_no_fpc_when_blank(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(HEADER + "1,01,A,r1,,2,4,5\n2,01,A,r2,,2,3,na\n", encoding="utf-8")
    r = read_responses_csv(path)
    assert r.items == ("q1", "q2") and r.fpc is None


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("1,01,A,r1,100,2,6,5\n", r"line 2, column 'q1': answer '6'"),
        ("1,01,A,r1,100,2,4,5\n2,01,A,r2,100,2,4,0\n", r"line 3, column 'q2': answer '0'"),
        ("1,01,A,r1,100,heavy,4,5\n", r"line 2, column 'weight': 'heavy' is not a number"),
        ("1,01,A,r1,100,-1,4,5\n", r"line 2, column 'weight'.*positive"),
        ("1,01,A,r1,100,2,4,5\n2,01,A,r2,200,2,4,5\n", r"row 2, column 'fpc'.*differs"),
        ("1,01,A,r1,100,2,4,5\n2,01,A,r2,,2,4,5\n", r"line 3, column 'fpc': empty"),
        ("1,01,A,r1,1,2,4,5\n2,01,A,r2,1,2,4,5\n", r"smaller than its 2 sampled PSUs"),
        ("1,,A,r1,100,2,4,5\n", r"line 2, column 'province': empty"),
        ("1,01,A,r1,100,2,4\n", r"line 2: 7 fields"),
        ("", r"no response rows"),
    ],
)
def test_reader_and_design_errors_name_row_and_column(body, match):
    design = Design(elements={"e": ("q1", "q2")})
    with pytest.raises(EstimationInputError, match=match):
        r = read_responses_csv(io.StringIO(HEADER + body), design.items)
        estimate(r, design)


def test_reader_missing_columns():
    with pytest.raises(EstimationInputError, match=r"missing column\(s\): weight, q3"):
        read_responses_csv(io.StringIO(HEADER.replace(",weight", "") + "1,01,A,r1,100,4,5\n"), ["q1", "q2", "q3"])
    with pytest.raises(EstimationInputError, match="empty"):
        read_responses_csv(io.StringIO(""))


def test_estimate_requires_design_items_in_responses():
    r = read_responses_csv(io.StringIO(HEADER + "1,01,A,r1,100,2,4,5\n2,01,A,r2,100,2,4,5\n"), ["q1", "q2"])
    with pytest.raises(EstimationInputError, match="no column for item"):
        estimate(r, Design(elements={"e": ("q1", "zz")}))


def test_read_design_json(tmp_path):
    design = read_design_json(FIXTURE / "design.json")
    assert design.items == ("a1", "a2", "a3", "p1", "p2", "p3", "p4", "s1", "s2")
    assert design.satisfied == (4, 5) and design.clustered is False and design.parts is None
    bom = tmp_path / "d.json"
    bom.write_text("\ufeff" + json.dumps({"elements": {"e": ["x"]}, "parts": {"service": ["e"]}}), encoding="utf-8")
    assert read_design_json(bom).parts == {"service": ("e",)}
    for bad, match in [
        ({"elements": {}}, "elements"),
        ({"elements": {"e": ["x"]}, "satisfied": [6]}, "satisfied"),
        ({"elements": {"e": ["x"], "f": ["y"]}, "parts": {"p": ["e"]}}, "belong to no part"),
        ({"elements": {"e": ["x"]}, "parts": {"p": ["zz"]}}, "unknown element"),
        ({"elements": {"e": ["x"]}, "clustered": "yes"}, "clustered"),
    ]:
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad), encoding="utf-8")
        with pytest.raises(EstimationInputError, match=match):
            read_design_json(path)
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(EstimationInputError, match="invalid JSON"):
        read_design_json(tmp_path / "broken.json")
