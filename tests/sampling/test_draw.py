"""Seeded selection (services/sampling/draw.py): reproducibility, independence, probabilities."""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections import Counter

import numpy as np
import pytest

from services.sampling.design import DesignError, StratumSpec, allocate, plan_strata
from services.sampling.draw import (
    HASH_FORMAT,
    SampleRow,
    canonical_ids,
    draw_strata,
    draw_stratum,
    multi_stage,
    pps_probabilities,
    sample_hash,
    serialise_rows,
    stream,
    stream_entropy,
    stream_key,
    systematic_pps,
)

SEED = 20260101
KEY = "01|province|land"
IDS20 = [f"u{i:02d}" for i in range(20)]
GOLDEN_PPS_SEEDS = "43f96b83e45fec2d183069d085dcf96863c64183cd2ed010939496a24eefb638"
PPS_UNITS = [(f"c{i:02d}", s) for i, s in enumerate([500, 120, 80, 60, 40, 900, 30, 20, 10, 5])]


def small_resident_frame():
    communes = [("c1", 300), ("c2", 200), ("c3", 100), ("c4", 400)]
    villages = {
        "c1": [("v11", 100), ("v12", 200)],
        "c2": [("v21", 50), ("v22", 150)],
        "c3": [("v31", 100)],
        "c4": [("v41", 100), ("v42", 100), ("v43", 200)],
    }
    residents = {v: [f"{v}-p{i:03d}" for i in range(size)] for vs in villages.values() for v, size in vs}
    return communes, villages, residents


# --------------------------------------------------------------------------------------------
# golden values: these pin the whole reproducibility contract (seed derivation, PCG64, NumPy's
# bounded-integer algorithm, our selection algorithms, the serialisation). If one fails after a
# NumPy upgrade, samples drawn before the upgrade can no longer be re-drawn bit for bit: do not
# just update the numbers — pin NumPy or keep the old algorithm.


def test_golden_stream_derivation():
    expected = int.from_bytes(hashlib.sha256(f"{SEED}:{KEY}".encode()).digest(), "big")
    assert stream_entropy(SEED, KEY) == expected
    assert stream(SEED, KEY).bit_generator.random_raw(2).tolist() == [10638692275318839377, 4869464307529607425]


def test_golden_small_stratum():
    d = draw_stratum(IDS20, 5, 3, SEED, KEY)
    assert d.sample == ("u01", "u11", "u19", "u07", "u09")
    assert d.reserve == ("u14", "u05", "u17")
    assert sample_hash(d.rows()) == "0c05144a957e533aa4bd94b5e7003167c4dd4d1aff80138bf6336bc06118cab1"


def test_golden_large_stratum():
    big = [f"t{i:05d}" for i in range(20_000)]
    d = draw_stratum(big, 1000, 500, 7, "big")
    assert d.sample[:3] == ("t14598", "t10129", "t04749")
    assert d.reserve[-2:] == ("t08690", "t13476")
    assert sample_hash(d.rows()) == "d7140da177e45b16ac8913d598bfc52450d06f5db272986f698f15f0694244aa"


def test_golden_pps():
    p = systematic_pps(PPS_UNITS, 4, SEED, "psu")
    assert p.random_start == 269
    assert p.ids == ("c00", "c02", "c05", "c06")


def test_golden_multi_stage():
    communes, villages, residents = small_resident_frame()
    m = multi_stage(
        communes, villages, residents, n_communes=2, villages_per_commune=1, people_per_village=5,
        seed=SEED, stratum_key="P01",
    )
    assert [(v.psu_id, v.ssu_id) for v in m.villages] == [("c2", "v22"), ("c4", "v42")]
    assert sample_hash(m.rows()) == "d4ebb1d114c0a8e5111d9a64aa0d8de2f302c1c212765f54bd76f6bd0dff1041"


# --------------------------------------------------------------------------------------------
# reproducibility of SRS


def test_same_seed_same_sample_different_seed_different_sample():
    frame = [f"id-{i}" for i in range(1000)]
    a = draw_stratum(frame, 50, 25, SEED, KEY)
    b = draw_stratum(frame, 50, 25, SEED, KEY)
    c = draw_stratum(frame, 50, 25, SEED + 1, KEY)
    d = draw_stratum(frame, 50, 25, str(SEED), KEY)  # "20260101" and 20260101 are the same seed
    assert a == b == d
    assert set(a.sample) != set(c.sample)
    assert sample_hash(a.rows()) == sample_hash(b.rows()) != sample_hash(c.rows())


def test_input_order_does_not_matter():
    frame = [f"id-{i}" for i in range(1000)]
    shuffled = frame[:]
    random.Random(1).shuffle(shuffled)
    a = draw_stratum(frame, 40, 20, SEED, KEY)
    b = draw_stratum(shuffled, 40, 20, SEED, KEY)
    c = draw_stratum(np.array(list(reversed(frame))), 40, 20, SEED, KEY)
    assert a == b == c


def test_canonical_order_is_code_point_order():
    ids = ["Đà Nẵng", "Zeta", "An Giang", "an", "Ấp 1", "10", "9"]
    assert canonical_ids(ids).tolist() == sorted(ids)


def test_bad_frames_are_refused():
    with pytest.raises(DesignError, match="duplicate"):
        draw_stratum(["a", "b", "a"], 1, 0, SEED, KEY)
    with pytest.raises(DesignError, match="strings"):
        draw_stratum([1, 2, 3], 1, 0, SEED, KEY)
    with pytest.raises(DesignError, match="exceeds"):
        draw_stratum(["a", "b"], 3, 0, SEED, KEY)
    with pytest.raises(DesignError):
        draw_stratum(["a", "b"], -1, 0, SEED, KEY)
    with pytest.raises(DesignError, match="':'"):
        draw_stratum(["a", "b"], 1, 0, "2026:1", KEY)
    with pytest.raises(DesignError):
        draw_stratum(["a", "b"], 1, 0, True, KEY)
    with pytest.raises(DesignError):
        draw_stratum(["a", "b"], 1, 0, 1.5, KEY)


def test_reserve_is_ordered_disjoint_and_capped():
    frame = [f"id-{i}" for i in range(100)]
    d = draw_stratum(frame, 30, 15, SEED, KEY)
    assert len(d.sample) == 30 and len(d.reserve) == 15
    assert not set(d.sample) & set(d.reserve)
    assert len(set(d.sample)) == 30 and len(set(d.reserve)) == 15
    assert set(d.sample) | set(d.reserve) <= set(frame)
    capped = draw_stratum(frame, 90, 45, SEED, KEY)
    assert capped.n_reserve == 10
    assert set(capped.sample) | set(capped.reserve) == set(frame)
    empty = draw_stratum(frame, 0, 10, SEED, KEY)
    assert empty.sample == () and empty.reserve == () and empty.pi == 0.0


def test_sample_does_not_depend_on_reserve_size_and_reserves_extend():
    frame = [f"id-{i}" for i in range(5000)]
    short = draw_stratum(frame, 200, 10, SEED, KEY)
    long = draw_stratum(frame, 200, 100, SEED, KEY)
    assert short.sample == long.sample
    assert long.reserve[:10] == short.reserve
    # any prefix of the draw is itself the draw of a smaller sample
    assert draw_stratum(frame, 50, 0, SEED, KEY).sample == short.sample[:50]


def test_srs_probabilities_and_weights():
    frame = [f"id-{i}" for i in range(1234)]
    d = draw_stratum(frame, 100, 50, SEED, KEY)
    assert d.pi == 100 / 1234
    assert d.weight == 1234 / 100
    assert d.population == 1234
    # Σπ over the frame is n, and the weights of the sample add up to N
    assert d.pi * d.population == pytest.approx(d.n, abs=1e-9)
    assert sum(r.weight for r in d.rows() if r.role == "sample") == pytest.approx(1234)
    rows = d.rows()
    assert [r.order for r in rows if r.role == "reserve"] == list(range(1, 51))


# --------------------------------------------------------------------------------------------
# streams: one stratum never affects another


def test_changing_one_stratum_changes_no_other():
    frames = {
        "A": [f"a{i}" for i in range(500)],
        "B": [f"b{i}" for i in range(300)],
        "C": [f"c{i}" for i in range(800)],
    }
    strata = [StratumSpec(k, len(v)) for k, v in frames.items()]
    plan = plan_strata(strata, allocate(strata, 160))
    first = draw_strata(frames, plan, SEED)

    changed = dict(frames)
    changed["B"] = frames["B"][:-7] + ["new1", "new2"]
    strata2 = [StratumSpec(k, len(v)) for k, v in changed.items()]
    plan2 = [p for p in plan_strata(strata2, {**{p.key: p.n for p in plan}}) if p.key == "B"]
    plan2 += [p for p in plan if p.key != "B"]
    second = draw_strata(changed, plan2, SEED)

    assert second["A"] == first["A"] and second["C"] == first["C"]
    assert second["B"] != first["B"]
    # the order in which strata are drawn is irrelevant
    assert draw_strata(frames, list(reversed(plan)), SEED) == first


def test_draw_strata_refuses_a_frame_that_changed_since_the_design():
    frames = {"A": [f"a{i}" for i in range(10)]}
    plan = plan_strata([StratumSpec("A", 11)], {"A": 3})
    with pytest.raises(DesignError, match="design assumed 11"):
        draw_strata(frames, plan, SEED)
    with pytest.raises(DesignError, match="no frame"):
        draw_strata({}, plan, SEED)


def test_stream_keys_are_unambiguous():
    assert stream_key("a|b", "c") != stream_key("a", "b|c")
    assert stream_entropy(1, stream_key("a|b", "c")) != stream_entropy(1, stream_key("a", "b|c"))


# --------------------------------------------------------------------------------------------
# statistical checks (fast): SRS is uniform, PPS frequency ≈ π


def test_srs_selection_is_uniform_over_seeds():
    n_units, n, r, seeds = 20, 5, 3, 2000
    sample_counts: Counter[str] = Counter()
    reserve_counts: Counter[str] = Counter()
    first_reserve: Counter[str] = Counter()
    for s in range(seeds):
        d = draw_stratum(IDS20, n, r, s, KEY)
        sample_counts.update(d.sample)
        reserve_counts.update(d.reserve)
        first_reserve[d.reserve[0]] += 1
    expected = seeds * n / n_units  # 500, sd ≈ 19.4
    chi2 = sum((sample_counts[u] - expected) ** 2 / expected for u in IDS20)
    # χ² with 19 df (times the finite-population factor < 1): P(χ² > 50) < 1e-4
    assert chi2 < 50, chi2
    assert all(abs(sample_counts[u] - expected) < 6 * math.sqrt(expected * (1 - n / n_units)) for u in IDS20)
    # every unit has the same chance to be a reserve, and to be the first reserve
    exp_r = seeds * r / n_units  # 300
    assert all(abs(reserve_counts[u] - exp_r) < 6 * math.sqrt(exp_r) for u in IDS20)
    exp_f = seeds / n_units  # 100
    assert all(abs(first_reserve[u] - exp_f) < 6 * math.sqrt(exp_f) for u in IDS20)


def test_pps_selection_frequency_matches_pi():
    units = [(f"v{i:02d}", s) for i, s in enumerate([5, 8, 13, 21, 34, 55, 89, 10, 3, 40, 25, 7])]
    n, seeds = 4, 2000
    pis = pps_probabilities(units, n)
    assert sum(pis.values()) == pytest.approx(n, abs=1e-12)
    counts: Counter[str] = Counter()
    for s in range(seeds):
        d = systematic_pps(units, n, s, "pps-check")
        assert len(d.selected) == n
        for u in d.selected:
            assert u.pi == pis[u.unit_id]
        counts.update(d.ids)
    for uid, pi in pis.items():
        sd = math.sqrt(seeds * pi * (1 - pi)) if pi < 1 else 0.0
        assert abs(counts[uid] - seeds * pi) <= 5 * sd + 1e-9, (uid, counts[uid], seeds * pi)


# --------------------------------------------------------------------------------------------
# PPS


def test_pps_certainty_units_iterate():
    # T = 200, n = 3: step 66.7 → "a" (100) is certain; then T′ = 100, n′ = 2: step 50 → "b" (60)
    # is certain; then T″ = 40, n″ = 1: nobody reaches 40.
    units = [("a", 100), ("b", 60), ("c", 20), ("d", 10), ("e", 10)]
    pis = pps_probabilities(units, 3)
    assert pis == {"a": 1.0, "b": 1.0, "c": 0.5, "d": 0.25, "e": 0.25}
    for s in range(50):
        d = systematic_pps(units, 3, s, "k")
        assert d.n_certainty == 2 and d.n_systematic == 1 and d.remaining_size == 40
        assert {u.unit_id for u in d.selected if u.certainty} == {"a", "b"}
        assert len(d.selected) == 3
        assert all(u.pi == 1.0 for u in d.selected if u.certainty)


def test_pps_unit_of_exactly_one_step_is_a_certainty_unit():
    # n·size = 2·50 = T: size equals the step, so "a" is taken with certainty (π = 1, flagged)
    units = [("a", 50), ("b", 25), ("c", 25)]
    for s in range(20):
        d = systematic_pps(units, 2, s, "k")
        assert d.n_certainty == 1 and d.selected[0].unit_id == "a" and d.selected[0].certainty


def test_golden_pps_over_many_seeds():
    # small integer sizes put selection points on unit boundaries often: pins the [lo, hi) rule
    units = [(f"u{i}", s) for i, s in enumerate([1, 2, 3, 1, 1, 4, 2, 1, 3, 2])]
    picks = "|".join(",".join(systematic_pps(units, 3, s, "g").ids) for s in range(200))
    assert hashlib.sha256(picks.encode()).hexdigest() == GOLDEN_PPS_SEEDS


def test_pps_probabilities_sum_to_n_and_all_units_when_n_equals_count():
    assert sum(pps_probabilities(PPS_UNITS, 4).values()) == pytest.approx(4, abs=1e-12)
    all_units = systematic_pps(PPS_UNITS, len(PPS_UNITS), SEED, "k")
    assert len(all_units.selected) == len(PPS_UNITS) and all(u.pi == 1.0 for u in all_units.selected)
    assert systematic_pps(PPS_UNITS, 0, SEED, "k").selected == ()


def test_pps_reproducible_and_order_free():
    shuffled = PPS_UNITS[:]
    random.Random(3).shuffle(shuffled)
    assert systematic_pps(PPS_UNITS, 4, SEED, "k") == systematic_pps(shuffled, 4, SEED, "k")
    starts = {systematic_pps(PPS_UNITS, 4, s, "k").random_start for s in range(20)}
    assert len(starts) > 1


@pytest.mark.parametrize(
    ("units", "n", "match"),
    [
        ([("a", 1), ("b", 2)], 3, "cannot select"),
        ([("a", 0), ("b", 2)], 1, "positive"),
        ([("a", 1.5), ("b", 2)], 1, "integer"),
        ([("a", 1), ("a", 2)], 1, "duplicate"),
        ([("a", 1), ("b", 2)], -1, "non-negative"),
        ([("a",)], 1, "pairs"),
    ],
)
def test_pps_errors(units, n, match):
    with pytest.raises(DesignError, match=match):
        systematic_pps(units, n, SEED, "k")


# --------------------------------------------------------------------------------------------
# multi-stage


def draw_ms(seed=SEED, **kw):
    communes, villages, residents = small_resident_frame()
    args = dict(n_communes=2, villages_per_commune=1, people_per_village=5, seed=seed, stratum_key="P01")
    args.update(kw)
    return multi_stage(communes, villages, residents, **args)


def test_multi_stage_structure_and_probabilities():
    m = draw_ms()
    assert len(m.communes.selected) == 2 and len(m.villages) == 2
    assert len(m.sample) == 10 and len(m.reserve) == 6  # ceil(0.5·5) = 3 per village
    for p in m.persons:
        assert p.pi == pytest.approx(p.pi_psu * p.pi_ssu * p.pi_unit, rel=1e-15)
        assert p.weight == pytest.approx(1 / p.pi)
        # PPS at both stages on resident counts with a fixed take: self-weighting, π = 2·1·5/1000
        assert p.pi == pytest.approx(0.01)
    villages = {(v.psu_id, v.ssu_id) for v in m.villages}
    assert {(p.psu_id, p.ssu_id) for p in m.persons} == villages
    for v in m.villages:
        sample = [p for p in m.sample if p.ssu_id == v.ssu_id]
        reserve = [p for p in m.reserve if p.ssu_id == v.ssu_id]
        assert [p.order for p in reserve] == [1, 2, 3]
        assert not {p.unit_id for p in sample} & {p.unit_id for p in reserve}
        assert all(p.unit_id.startswith(v.ssu_id + "-") for p in sample + reserve)
    rows = m.rows()
    assert all(r.psu and r.ssu and len(r.pi_stages) == 3 for r in rows)


def test_multi_stage_srs_villages_and_small_communes():
    m = draw_ms(village_method="srs", n_communes=4, villages_per_commune=2)
    by_commune = Counter(v.psu_id for v in m.villages)
    assert by_commune == {"c1": 2, "c2": 2, "c3": 1, "c4": 2}  # c3 has a single village
    for v in m.villages:
        expected = {"c1": 1.0, "c2": 1.0, "c3": 1.0, "c4": 2 / 3}[v.psu_id]
        assert v.pi_ssu == pytest.approx(expected)
        assert v.pi_psu == 1.0  # 4 of 4 communes


def test_multi_stage_takes_everyone_in_a_small_village():
    communes = [("c1", 3)]
    m = multi_stage(
        communes, {"c1": [("v1", 3)]}, {"v1": ["x", "y", "z"]}, n_communes=1, villages_per_commune=1,
        people_per_village=5, seed=SEED,
    )
    assert sorted(p.unit_id for p in m.sample) == ["x", "y", "z"] and m.reserve == ()
    assert all(p.pi == 1.0 and p.weight == 1.0 for p in m.persons)


def test_multi_stage_one_village_change_only_changes_that_village():
    communes, villages, residents = small_resident_frame()
    kw = dict(n_communes=4, villages_per_commune=3, people_per_village=5, seed=SEED, stratum_key="P01")
    before = multi_stage(communes, villages, residents, **kw)
    changed = dict(residents)
    changed["v22"] = residents["v22"] + ["v22-new1", "v22-new2"]
    after = multi_stage(communes, villages, changed, **kw)
    for p_before, p_after in zip(
        [p for p in before.persons if p.ssu_id != "v22"], [p for p in after.persons if p.ssu_id != "v22"]
    ):
        assert p_before == p_after
    assert [p.unit_id for p in before.persons if p.ssu_id == "v22"] != [
        p.unit_id for p in after.persons if p.ssu_id == "v22"
    ]


def test_multi_stage_weights_are_unbiased_for_the_population():
    # E[Σ w] = N under any design; here with unequal sizes and SRS villages (not self-weighting)
    communes, villages, residents = small_resident_frame()
    total = sum(len(v) for v in residents.values())
    sums = []
    for s in range(400):
        m = multi_stage(
            communes, villages, residents, n_communes=2, villages_per_commune=1, people_per_village=4,
            seed=s, village_method="srs",
        )
        sums.append(sum(p.weight for p in m.sample))
    mean = sum(sums) / len(sums)
    sd = (sum((x - mean) ** 2 for x in sums) / (len(sums) - 1)) ** 0.5
    assert abs(mean - total) < 4 * sd / math.sqrt(len(sums)), (mean, total)


def test_multi_stage_errors():
    communes, villages, residents = small_resident_frame()
    kw = dict(n_communes=2, villages_per_commune=1, people_per_village=5, seed=SEED)
    with pytest.raises(DesignError, match="village_method"):
        multi_stage(communes, villages, residents, village_method="cluster", **kw)
    with pytest.raises(DesignError, match="no village list"):
        multi_stage(communes, {}, residents, **kw)
    with pytest.raises(DesignError, match="no resident list"):
        multi_stage(communes, villages, {}, **kw)
    with pytest.raises(DesignError, match="positive"):
        multi_stage(communes, villages, residents, **{**kw, "people_per_village": 0})


# --------------------------------------------------------------------------------------------
# the fingerprint


def test_sample_hash_is_canonical():
    d = draw_stratum(IDS20, 5, 3, SEED, KEY)
    rows = list(d.rows())
    shuffled = rows[:]
    random.Random(5).shuffle(shuffled)
    assert sample_hash(rows) == sample_hash(shuffled)
    data = serialise_rows(rows).decode("ascii")
    assert data.startswith(HASH_FORMAT + "\n")
    assert data.splitlines()[1] == '["01|province|land","","","sample",1,"u01","0.25","4.0",[]]'
    # any change — a probability, an id, the order — changes the hash
    bumped = [SampleRow(**{**_asdict(rows[0]), "pi": 0.25000000000000006})] + rows[1:]
    assert sample_hash(bumped) != sample_hash(rows)
    swapped = [SampleRow(**{**_asdict(rows[0]), "order": 2}), SampleRow(**{**_asdict(rows[1]), "order": 1})] + rows[2:]
    assert sample_hash(swapped) != sample_hash(rows)
    assert sample_hash([]) == hashlib.sha256(f"{HASH_FORMAT}\n".encode()).hexdigest()


def test_sample_hash_escapes_non_ascii_ids():
    rows = [SampleRow("Hà Nội", "sample", 1, "Nguyễn", 0.5, 2.0)]
    assert b"\\u1ec5" in serialise_rows(rows)


def _asdict(row: SampleRow) -> dict:
    return {f: getattr(row, f) for f in SampleRow.__slots__}


# --------------------------------------------------------------------------------------------
# performance: a national-size frame


def _fixed_width_ids(n: int) -> np.ndarray:
    """n distinct 9-digit ids as a NumPy 'U9' array, built without Python string objects."""
    digits = (np.arange(n, dtype=np.int64)[:, None] // 10 ** np.arange(8, -1, -1)) % 10
    return (digits + ord("0")).astype(np.uint32).view("<U9").ravel()


@pytest.mark.slow
def test_five_million_frame_forty_thousand_sample_is_fast():
    ids = _fixed_width_ids(5_000_000)
    t0 = time.perf_counter()
    d = draw_stratum(ids, 40_000, 20_000, SEED, KEY)
    elapsed = time.perf_counter() - t0
    assert len(d.sample) == 40_000 and len(d.reserve) == 20_000
    assert len(set(d.sample) | set(d.reserve)) == 60_000
    assert elapsed < 5.0, elapsed
