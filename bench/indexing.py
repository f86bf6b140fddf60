"""Indexing benchmarks (issue 6).

    python -m bench.indexing            # 10,000,000 responses × 22 items (several minutes, ~2 GiB)
    python -m bench.indexing --quick    # 200,000 responses: a smoke run

1. **Final run at scale**: design-based estimates (ratios, full item covariance under strata and
   first-stage fpc, element and SIPAS composites with SEs) by province × level for 22 items, from
   arrays, beside a bare polars group-by computing the same weighted sums (Σ w·y and Σ w·a per
   item and province × level) on the same data. Target ≤ 1.5× polars; peak memory reported
   (tracemalloc: numpy and Python allocations).
2. **National wave end to end**: ``compute.compute_run`` over 40,000 accepted forms of the
   ``sipas-2017`` questionnaire (every domain, both weightings, expectation, rankings input) --
   what a final run computes before storing. Target: well under a second.
3. **Incremental provisional update**: the per-form contributions of 1,000 new decisions folded
   into the additive sums (``service.ProvisionalDeltas``, what the consumer does with a batch of
   ``response.accepted`` events before one upsert per touched cell), against a full recompute of
   the same 40,000-form wave. Target ≤ 1%.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import Result, parser, peak_memory_mib, report, timed

ROOT = Path(__file__).resolve().parents[1]
K = 22
PROVINCES = 34
LEVELS = ("province", "commune")


def cpu_timed(fn, repeat: int = 3):
    """Median CPU time of ``repeat`` runs (all threads of the process): the compute a run
    costs, which a loaded shared machine inflates less than wall time."""
    times, result = [], None
    for _ in range(repeat):
        start = time.process_time()
        result = fn()
        times.append(time.process_time() - start)
    return statistics.median(times), result


def synthetic(n: int, seed: int = 7):
    """n responses: province, level, stratum = province × level × field (6 fields), base
    weights, answers 1–5 with ~5% blanks, arrays only."""
    rng = np.random.default_rng(seed)
    province = rng.integers(0, PROVINCES, n, dtype=np.int64)
    level = rng.integers(0, len(LEVELS), n, dtype=np.int64)
    field = rng.integers(0, 6, n, dtype=np.int64)
    stratum = (province * len(LEVELS) + level) * 6 + field
    weight = rng.uniform(20.0, 200.0, n)
    # one array per item (columns), as a column store holds them and as polars gets them below
    answers = rng.integers(1, 6, (K, n), dtype=np.int8)
    answers[rng.random((K, n)) < 0.05] = 0
    return province, level, stratum, weight, answers


def final_run_arrays(province, level, stratum, weight, answers, fpc):
    """The estimator's work for province × level: ratios and covariance for 22 items, then the
    element and SIPAS composites with SEs (5 elements as in sipas-2017)."""
    from services.indexing.estimation import Design, SampleDesign, composite_indices

    items = tuple(f"i{j:02d}" for j in range(K))
    design = Design(elements={"access": items[:4], "procedures": items[4:9], "staff": items[9:15],
                              "results": items[15:18], "feedback": items[18:22]})
    sample = SampleDesign(stratum, None, fpc)
    domain = province * len(LEVELS) + level

    def get_ya(rows):
        block = np.take(answers, rows, axis=1)  # (items, rows); np.take: ~4x faster than [:, rows]
        return block >= 4, block >= 1

    estimates = sample._domains(get_ya, K, weight, domain, n_domains=PROVINCES * len(LEVELS))
    return estimates, [composite_indices(r.ratio, r.cov, items, design) for r in estimates]


def polars_sums(df):
    import polars as pl

    cols = [f"i{j:02d}" for j in range(K)]
    aggs = []
    for c in cols:
        aggs.append((pl.col("w") * (pl.col(c) >= 4)).sum().alias(f"y_{c}"))
        aggs.append((pl.col("w") * (pl.col(c) >= 1)).sum().alias(f"a_{c}"))
    return df.group_by(["province", "level"]).agg(aggs)


def bench_scale(n: int) -> list[Result]:
    import polars as pl

    province, level, stratum, weight, answers = synthetic(n)
    sizes = np.bincount(stratum) * 50.0
    fpc = sizes[stratum]
    df = pl.DataFrame({"province": province, "level": level, "w": weight,
                       **{f"i{j:02d}": answers[j] for j in range(K)}})
    repeat = 3 if n <= 1_000_000 else 2
    # Side by side, alternating, so that load on a shared machine hits both alike.
    t_polars, t_ours, cpu_polars, cpu_ours = [], [], [], []
    for _ in range(repeat):
        for times, cpus, fn in ((t_polars, cpu_polars, lambda: polars_sums(df)),
                                (t_ours, cpu_ours, lambda: final_run_arrays(province, level, stratum, weight,
                                                                             answers, fpc))):
            c0, t0 = time.process_time(), time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    t_polars, t_ours = statistics.median(t_polars), statistics.median(t_ours)
    # Honest baseline: polars' sums are the numerators and denominators of our ratios.
    estimates, composites = out
    sums = polars_sums(df).sort(["province", "level"])
    for row in sums.iter_rows(named=True):
        r = estimates[row["province"] * len(LEVELS) + row["level"]]
        np.testing.assert_allclose([row[f"y_i{j:02d}"] for j in range(K)], r.numerator, rtol=1e-9)
        np.testing.assert_allclose([row[f"a_i{j:02d}"] for j in range(K)], r.denominator, rtol=1e-9)
    assert len(composites) == len(sums) == PROVINCES * len(LEVELS)
    mem, _ = peak_memory_mib(lambda: final_run_arrays(province, level, stratum, weight, answers, fpc))
    input_mib = (answers.nbytes + weight.nbytes + stratum.nbytes + province.nbytes + level.nbytes + fpc.nbytes) / 2**20
    return [
        Result(f"final run, {n:,} responses × {K} items, province × level", t_ours, "s", baseline=t_polars,
               baseline_name="polars group-by of the same sums", higher_is_better=False, target="≤ 1.5× polars",
               note=f"wall time; CPU time {statistics.median(cpu_ours):.2f} s vs polars "
                    f"{statistics.median(cpu_polars):.2f} s. Ours also computes the 22×22 covariance under "
                    "strata + fpc and composite SEs; polars only the weighted sums (checked equal to ours)"),
        Result("final run peak memory (beyond the input arrays)", mem, "MiB", higher_is_better=False,
               note=f"input arrays {input_mib:,.0f} MiB"),
    ]


def wave_rows(n: int, seed: int = 11):
    """A national wave of n accepted forms in the service's row shape, sipas-2017 items."""
    from shared.methodology import parse_methodology

    doc = json.loads((ROOT / "services" / "survey" / "methodologies" / "sipas-2017.json").read_text())
    methodology = parse_methodology(doc)
    items = methodology.satisfaction_items()
    rng = np.random.default_rng(seed)
    prov = rng.integers(1, PROVINCES + 1, n)
    lev = rng.integers(0, 2, n)
    fld = rng.integers(0, 6, n)
    commune = rng.integers(0, 100, n)
    answers = rng.integers(1, 6, (n, len(items)))
    blank = rng.random((n, len(items))) < 0.05
    options = [o.code for o in methodology.expectation.options]
    rows, sizes = [], {}
    for i in range(n):
        stratum = f"{prov[i]:02d}-{LEVELS[lev[i]]}-f{fld[i]}"
        sizes[stratum] = sizes.get(stratum, 0) + 40
        ans = {c: (None if blank[i, j] else int(answers[i, j])) for j, c in enumerate(items)}
        ans[methodology.expectation.code] = [options[i % len(options)]]
        rows.append({"form_code": f"F{i:07d}", "decision_version": 1, "stratum": stratum, "psu": f"u{i}",
                     "weight": 40.0, "province_code": f"{prov[i]:02d}",
                     "commune_code": f"{prov[i]:02d}{commune[i]:03d}", "level": LEVELS[lev[i]],
                     "field": f"f{fld[i]}", "procedure_code": f"p{fld[i]}", "respondent_type": "citizen",
                     "channel": "paper", "answers": ans})
    return methodology, rows, sizes


def bench_wave(n: int, increment: int) -> list[Result]:
    from services.indexing import compute, service

    methodology, rows, sizes = wave_rows(n)
    forms = compute.AcceptedForms.from_rows(rows)
    t_run, result = timed(lambda: compute.compute_run(forms, methodology, sizes), 3)
    cpu_run, _ = cpu_timed(lambda: compute.compute_run(forms, methodology, sizes), 3)
    t_total, _ = timed(lambda: compute.compute_run(compute.AcceptedForms.from_rows(rows), methodology, sizes), 1)

    new = rows[:increment]

    def incremental():
        # What a batch of decision events does before its one upsert per touched cell: the
        # per-form contributions summed per (cell, item) and per stratum.
        deltas = service.ProvisionalDeltas()
        for form in new:
            deltas.add("wave", form, +1)
        return deltas.totals()

    t_inc, _ = timed(incremental, 5)
    cpu_inc, _ = cpu_timed(incremental, 5)
    return [
        Result(f"national wave end to end, {n:,} forms, every domain ({len(result.cells):,} cells)", t_run, "s",
               higher_is_better=False, target="well under 1 s",
               note=f"wall time; CPU time {cpu_run:.2f} s (all threads); with building the column arrays from "
                    f"rows: {t_total:.2f} s wall"),
        Result(f"incremental provisional update, {increment:,} forms", t_inc, "s", baseline=t_run,
               baseline_name=f"full recompute of the {n:,}-form wave", higher_is_better=False, target="≤ 1% (0.01)",
               note=f"CPU ratio {cpu_inc / cpu_run:.4f}. In-memory additive sums; in the service a batch of "
                    "decisions also costs one transaction (inbox, accepted-set and sums upserts)"),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    from services.indexing.compute import _threadpool_limit

    n_scale = 200_000 if args.quick else 10_000_000
    n_wave = 4_000 if args.quick else 40_000
    increment = 100 if args.quick else 1_000
    with _threadpool_limit():
        results = bench_scale(n_scale)
    results += bench_wave(n_wave, increment)
    report("indexing", results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
