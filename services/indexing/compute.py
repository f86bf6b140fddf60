"""A final run's numbers from the accepted forms of one wave: pure functions, no database.

Why separate from ``service.py``: the same function gives the same numbers in the service, in the
benchmark and in tests, and it can run in a worker thread while the event loop keeps serving.
The maths is ``estimation.py`` (Taylor linearisation under the design, R-checked); this module
decides *what* to estimate (domains, indicators, weights) and turns estimates into published
cells (CI, CV, design effect, suppression). Formulas with worked examples:
``docs/method/estimation.md`` and ``docs/indexing.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.indexing.estimation import (
    NOT_APPLICABLE,
    Design,
    DomainEstimates,
    RatioEstimates,
    SampleDesign,
    _composite_coefficients,
    _factorize,
)
from shared.methodology import Methodology

Z95 = 1.959963984540054
NATION = "VN"
_NONE = "\x00"  # label for "no value in this domain" (sorted first; never output)

#: Domains whose cells go down to single items. Commune, procedure and respondent-group cells stop
#: at elements: item cells there are thousands of tiny, mostly suppressed cells.
ITEM_DOMAINS = frozenset({"nation", "province", "level", "field", "policy_group"})
#: Domains that also get expectation cells.
EXPECTATION_DOMAINS = frozenset({"nation", "province", "level", "field"})


def code_version() -> str:
    """The version of the code that computes the numbers: package version + a digest of the
    modules that hold the maths, so a run says exactly which code produced it."""
    from services.indexing.app import SPEC

    digest = hashlib.sha256()
    here = Path(__file__).parent
    for name in ("estimation.py", "compute.py"):
        digest.update((here / name).read_bytes())
    return f"{SPEC.version}+{digest.hexdigest()[:12]}"


def accepted_fingerprint(pairs: Iterable[tuple[str, int]]) -> str:
    """sha256 over the sorted ``form_code:decision_version`` lines of the accepted set."""
    lines = sorted(f"{code}:{version}" for code, version in pairs)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


@dataclass
class AcceptedForms:
    """The accepted set of one wave, column-wise (one entry per form)."""

    form_code: list[str]
    decision_version: list[int]
    stratum: list[str]
    psu: list[str]
    weight: list[float]
    province: list[str | None]
    commune: list[str | None]
    level: list[str | None]
    field: list[str | None]
    procedure: list[str | None]
    respondent_type: list[str | None]
    channel: list[str | None]
    answers: list[Mapping[str, Any]]

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]]) -> AcceptedForms:
        rows = sorted(rows, key=lambda r: r["form_code"])  # order-free: same set, same numbers
        return cls(
            form_code=[r["form_code"] for r in rows],
            decision_version=[int(r["decision_version"]) for r in rows],
            stratum=[r["stratum"] for r in rows],
            psu=[r["psu"] for r in rows],
            weight=[float(r["weight"]) for r in rows],
            province=[r.get("province_code") for r in rows],
            commune=[r.get("commune_code") for r in rows],
            level=[r.get("level") for r in rows],
            field=[r.get("field") for r in rows],
            procedure=[r.get("procedure_code") for r in rows],
            respondent_type=[r.get("respondent_type") for r in rows],
            channel=[r.get("channel") for r in rows],
            answers=[r.get("answers") or {} for r in rows],
        )

    @property
    def n(self) -> int:
        return len(self.form_code)


_PLAIN_TYPES = frozenset({int, str, type(None)})
_ANSWER_CODE = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, "na": NOT_APPLICABLE}


def answer_matrix(answers: Sequence[Mapping[str, Any]], items: Sequence[str]) -> np.ndarray:
    """(k, n) int8 codes, one row per item (the estimator reads items as rows): 1–5, 0 = blank
    (or anything not a 1–5 code), -1 = ``na``.  A dict lookup per answer, not a branch: this
    runs for every answer of a national wave."""
    n, k = len(answers), len(items)
    if not n or not k:
        return np.zeros((k, n), dtype=np.int8)
    # C-level iteration throughout (map over bound methods): this touches every answer of a wave.
    flat = list(itertools.chain.from_iterable(map(ans.get, items) for ans in answers))
    if set(map(type, flat)) <= _PLAIN_TYPES:
        codes = list(map(_ANSWER_CODE.get, flat, itertools.repeat(0)))
    else:  # bools (True hashes like 1) or unhashable values (lists): not 1-5 codes
        codes = [_ANSWER_CODE.get(v, 0) if type(v) in _PLAIN_TYPES else 0 for v in flat]
    return np.array(codes, dtype=np.int8).reshape(n, k).T.copy()


def index_design(methodology: Methodology) -> Design:
    """The estimator's design card for a methodology version: elements → index items under the
    version's ``aggregation.element`` rule; parts → elements; SIPAS = mean of parts (with one
    part, as in 2017, that is the mean of elements)."""
    rule = methodology.aggregation.element
    elements: dict[str, tuple[str, ...]] = {}
    parts: dict[str, tuple[str, ...]] = {}
    for part in methodology.parts:
        codes = []
        for element in part.elements:
            items = tuple(element.index_items(rule))
            if items:
                elements[element.code] = items
                codes.append(element.code)
        if codes:
            parts[part.code] = tuple(codes)
    return Design(elements=elements, satisfied=tuple(sorted(set(methodology.aggregation.satisfied_codes))),
                  parts=parts)


# --------------------------------------------------------------------------------------------------
# Weights and design
# --------------------------------------------------------------------------------------------------


def nonresponse_adjusted(weight: np.ndarray, stratum_codes: np.ndarray, stratum_labels: Sequence[str],
                         frame_sizes: Mapping[str, int]) -> tuple[np.ndarray, dict[str, Any]]:
    """Scale the responding units' weights within each stratum so they sum to the stratum's
    frame size N_h: w_i* = w_i · N_h / Σ_{j∈h} w_j. Strata without a known frame size keep
    their base weights (reported in the run's parameters)."""
    sums = np.bincount(stratum_codes, weights=weight, minlength=len(stratum_labels))
    factor = np.ones(len(stratum_labels))
    adjusted, unknown = [], []
    for h, label in enumerate(stratum_labels):
        size = frame_sizes.get(label)
        if size is None or sums[h] <= 0:
            unknown.append(label)
            continue
        factor[h] = size / sums[h]
        adjusted.append(label)
    return weight * factor[stratum_codes], {"adjusted_strata": len(adjusted), "strata_without_frame_size": unknown}


@dataclass
class Weighting:
    """What one weighting computes: weights and the design the SE is taken under."""

    name: str  # "none" | "design"
    weight: np.ndarray


# --------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------


@dataclass
class Thresholds:
    suppress_below: int = 10
    unreliable_below: int = 30
    unreliable_cv: float = 0.15


def make_cell(domain: str, domain_code: str, indicator: str, code: str, weighting: str,
              value: float | None, var: float | None, n: int, srs_var: float | None,
              thresholds: Thresholds) -> dict[str, Any]:
    """One published cell on the 0–100 scale: value, SE, 95% CI (clipped to 0–100), CV, design
    effect and flag. ``value`` and ``var`` are on the ratio scale (0–1)."""
    se = None if var is None or not math.isfinite(var) else math.sqrt(max(var, 0.0))
    cell: dict[str, Any] = {
        "domain": domain, "domain_code": domain_code, "indicator": indicator, "code": code,
        "weighting": weighting, "value": None, "se": None, "ci_low": None, "ci_high": None,
        "n": int(n), "cv": None, "deff": None, "flag": "ok",
    }
    if value is None or not math.isfinite(value):
        cell["flag"] = "suppressed"
        return cell
    cv = se / value if se is not None and value > 0 else None
    if n < thresholds.suppress_below:
        cell["flag"] = "suppressed"
        return cell
    if n < thresholds.unreliable_below or (cv is not None and cv > thresholds.unreliable_cv):
        cell["flag"] = "unreliable"
    cell["value"] = 100.0 * value
    if se is not None:
        cell["se"] = 100.0 * se
        cell["ci_low"] = max(0.0, 100.0 * (value - Z95 * se))
        cell["ci_high"] = min(100.0, 100.0 * (value + Z95 * se))
        cell["cv"] = cv
        if srs_var is not None and srs_var > 0 and var is not None:
            cell["deff"] = var / srs_var
    return cell


@dataclass
class Indicator:
    """A linear combination of item ratios: ``coef`` over the k items (None: undefined here)."""

    indicator: str
    code: str
    coef: np.ndarray | None


def indicators_for(design: Design, items: Sequence[str], available: np.ndarray,
                   with_items: bool) -> list[Indicator]:
    """SIPAS, parts, elements and (optionally) items with their coefficient vectors; unavailable
    items drop out and their element's weight is shared by the others (estimation.md §2)."""
    elements, parts, overall = _composite_coefficients(design, items, available)
    out = [Indicator("sipas", "sipas", overall)]
    out += [Indicator("part", p, v) for p, v in (parts or {}).items()]
    out += [Indicator("element", e, v) for e, v in elements.items()]
    if with_items:
        for j, c in enumerate(items):
            coef = None
            if available[j]:
                coef = np.zeros(len(items))
                coef[j] = 1.0
            out.append(Indicator("item", c, coef))
    return out


def _quad(coef: np.ndarray, cov: np.ndarray) -> float:
    used = coef != 0
    c = coef[used]
    return float(c @ np.nan_to_num(cov[np.ix_(used, used)], nan=0.0) @ c)


def _quads(C: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """diag(C V Cᵀ) for the rows of C: the variances of many linear combinations at once."""
    V = np.nan_to_num(cov, nan=0.0)
    return np.einsum("ij,ij->i", C @ V, C)


def _value(coef: np.ndarray, ratio: np.ndarray) -> float:
    used = coef != 0
    return float(coef[used] @ ratio[used])


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    cells: list[dict[str, Any]]
    parameters: dict[str, Any]
    headline_weighting: str
    national_sipas: float | None = None
    province_values: dict[str, dict[str, float | None]] = field(default_factory=dict)


def _domain_codes(values: Sequence[str | None]) -> tuple[np.ndarray, list[str]]:
    """Integer codes and sorted labels of one domain kind; ``None`` and "" become :data:`_NONE`
    (no value: sorted first, never output). Dict lookups through ``map``: one per form."""
    uniq = set(values)
    label = {v: (_NONE if v is None or v == "" else str(v)) for v in uniq}
    names = sorted(set(label.values()))
    pos = {name: i for i, name in enumerate(names)}
    code_of = {v: pos[label[v]] for v in uniq}
    return np.fromiter(map(code_of.__getitem__, values), dtype=np.int64, count=len(values)), names


class _Estimator:
    """The three estimates every domain needs, from one sort of the rows per domain kind:

    * ``design``: weights w* (nonresponse-adjusted), SE under strata, clusters and fpc;
    * ``none``: weights 1 (the official figure), SE under the same design;
    * ``srs``: weights 1, one stratum, no clusters, no fpc -- the variance a simple random sample
      of the same n would give, the denominator of the design effect.  In a single-stage draw
      it comes out of the same pass (``SampleDesign._estimate(srs=True)``); a clustered draw
      needs rows, not PSU totals, so it takes its own pass there.
    """

    def __init__(self, sample: SampleDesign, srs: SampleDesign, w: np.ndarray):
        self.sample, self.srs, self.w = sample, srs, w

    def by_domain(self, get_ya, k: int, codes: np.ndarray, n_domains: int) -> dict[str, DomainEstimates]:
        if self.sample.single_stage:
            design, none, srs = self.sample._estimate(get_ya, k, [self.w, None], codes, n_domains=n_domains,
                                                      srs=True)
        else:
            design, none = self.sample._estimate(get_ya, k, [self.w, None], codes, n_domains=n_domains)
            srs = self.srs._estimate(get_ya, k, [None], codes, n_domains=n_domains)[0]
        return {"design": design, "none": none, "srs": srs}


def make_cells(domain: str, domain_codes: Sequence[str], indicators: Sequence[str], codes: Sequence[str],
               weighting: str, value: np.ndarray, var: np.ndarray, n: np.ndarray, srs_var: np.ndarray,
               thresholds: Thresholds) -> list[dict[str, Any]]:
    """Many :func:`make_cell` at once (same rules, array arithmetic): a national run has tens of
    thousands of cells, and one Python call per cell was a large share of its time. NaN in
    ``value``/``var``/``srs_var`` means undefined (``None`` for :func:`make_cell`)."""
    value = np.asarray(value, dtype=np.float64)
    var = np.asarray(var, dtype=np.float64)
    srs_var = np.asarray(srs_var, dtype=np.float64)
    n = np.asarray(n, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        has_se = np.isfinite(var)
        se = np.where(has_se, np.sqrt(np.clip(var, 0.0, None)), np.nan)
        has_cv = has_se & (value > 0)
        cv = np.where(has_cv, se / value, np.nan)
        shown = np.isfinite(value) & (n >= thresholds.suppress_below)
        unreliable = shown & ((n < thresholds.unreliable_below) | (has_cv & (cv > thresholds.unreliable_cv)))
        with_se = shown & has_se
        deff = np.where(with_se & (srs_var > 0), var / srs_var, np.nan)
        lo = np.maximum(0.0, 100.0 * (value - Z95 * se))
        hi = np.minimum(100.0, 100.0 * (value + Z95 * se))
    flag = np.where(shown, np.where(unreliable, "unreliable", "ok"), "suppressed")

    def col(x: np.ndarray, mask: np.ndarray) -> list:
        return [v if m else None for v, m in zip(x.tolist(), mask.tolist())]

    v_out = col(100.0 * value, shown)
    se_out = col(100.0 * se, with_se)
    lo_out = col(lo, with_se)
    hi_out = col(hi, with_se)
    cv_out = col(cv, with_se & has_cv)
    deff_out = col(deff, with_se & np.isfinite(deff))
    return [
        {"domain": domain, "domain_code": dc, "indicator": ind, "code": c, "weighting": weighting, "value": v,
         "se": s_, "ci_low": lo_, "ci_high": hi_, "n": nn, "cv": cv_, "deff": de, "flag": fl}
        for dc, ind, c, v, s_, lo_, hi_, nn, cv_, de, fl in zip(
            domain_codes, indicators, codes, v_out, se_out, lo_out, hi_out, n.tolist(), cv_out, deff_out,
            flag.tolist())
    ]


def _domain_cells(kind: str, dom_codes: Sequence[str], keep: np.ndarray, res: Mapping[str, DomainEstimates],
                  design: Design, items: Sequence[str], with_items: bool, codes: np.ndarray, valid: np.ndarray,
                  thresholds: Thresholds, province_var: dict | None, names: Sequence[str]) -> list[dict[str, Any]]:
    """Every indicator cell of every domain of one kind, both weightings.

    Domains are grouped by which items have an answer (almost always one group): each group's
    indicators are one coefficient matrix C, their values C·R and variances diag(C V Cᵀ) for all
    of the group's domains in one product."""
    k = len(items)
    r_w, r_u, r_s = res["design"], res["none"], res["srs"]
    available = np.isfinite(r_w.ratio)
    D = available.shape[0]
    n_counts: dict[bytes, np.ndarray] = {}

    def respondents_with_any(used: np.ndarray) -> np.ndarray:
        # n of a composite: respondents of the domain with a valid answer to any of its items
        key = used.tobytes()
        if key not in n_counts:
            n_counts[key] = np.bincount(codes, weights=valid[used].any(axis=0), minlength=D)
        return n_counts[key]

    out: list[dict[str, Any]] = []
    patterns, which = np.unique(available, axis=0, return_inverse=True)
    which = which.reshape(-1)
    for p, pattern in enumerate(patterns):
        doms = np.flatnonzero((which == p) & keep)
        if not doms.shape[0]:
            continue
        inds = indicators_for(design, items, pattern, with_items)
        defined = np.array([ind.coef is not None for ind in inds])
        C = np.array([ind.coef if ind.coef is not None else np.zeros(k) for ind in inds])
        n_ind = np.zeros((doms.shape[0], len(inds)), dtype=np.int64)
        for pos, ind in enumerate(inds):
            if ind.coef is None:
                continue
            if ind.indicator == "item":
                n_ind[:, pos] = r_w.n[doms, np.flatnonzero(ind.coef)[0]]
            else:
                n_ind[:, pos] = respondents_with_any(ind.coef != 0)[doms]

        def quads(r: DomainEstimates, doms: np.ndarray = doms, C: np.ndarray = C) -> np.ndarray:
            V = np.nan_to_num(r.cov[doms], nan=0.0)
            return np.einsum("ij,djk,ik->di", C, V, C)

        srs_var = np.where(defined, quads(r_s), np.nan)
        n_flat = n_ind.reshape(-1)
        dc = [dom_codes[d] for d in doms for _ in inds]
        ind_names = [ind.indicator for ind in inds] * doms.shape[0]
        ind_codes = [ind.code for ind in inds] * doms.shape[0]
        for wname, r in (("none", r_u), ("design", r_w)):
            value = np.where(defined, np.nan_to_num(r.ratio[doms], nan=0.0) @ C.T, np.nan)
            var = np.where(defined, quads(r), np.nan)
            out += make_cells(kind, dc, ind_names, ind_codes, wname, value.reshape(-1), var.reshape(-1), n_flat,
                              srs_var.reshape(-1), thresholds)
            if province_var is not None:
                for i, d in enumerate(doms):
                    prov = province_var[wname].setdefault(names[d], {})
                    for pos, ind in enumerate(inds):
                        ok = defined[pos]
                        prov[(ind.indicator, ind.code)] = (
                            float(value[i, pos]) if ok else None, float(var[i, pos]) if ok else None,
                            int(n_ind[i, pos]))
    return out


def _expectation_cells(kind: str, dom_codes: Sequence[str], keep: np.ndarray, res: Mapping[str, DomainEstimates],
                       options: Sequence[str], thresholds: Thresholds) -> list[dict[str, Any]]:
    """Share choosing each option among those who answered the question, per domain."""
    doms = np.flatnonzero(keep)
    j = np.arange(len(options))
    dc = [dom_codes[d] for d in doms for _ in options]
    names = ["expectation"] * len(dc)
    codes = list(options) * doms.shape[0]
    n = res["design"].n[doms].reshape(-1)
    srs_var = res["srs"].cov[doms][:, j, j].reshape(-1)
    out: list[dict[str, Any]] = []
    for wname in ("none", "design"):
        r = res[wname]
        out += make_cells(kind, dc, names, codes, wname, r.ratio[doms].reshape(-1),
                          r.cov[doms][:, j, j].reshape(-1), n, srs_var, thresholds)
    return out


def _threadpool_limit():
    """One BLAS thread for the estimator: its tall-skinny K×K products get slower, not faster,
    with multi-threaded OpenBLAS on a busy machine (measured by the estimator's author)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it the BLAS default applies
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def compute_run(forms: AcceptedForms, methodology: Methodology, frame_sizes: Mapping[str, int],
                *, domains: Sequence[str] | None = None) -> RunResult:
    """Every cell of a final run.

    ``domains`` restricts the domain kinds (benchmarks); the default is all of them: nation,
    province, commune, level, field, procedure, respondent groups (respondent type, channel,
    non-sensitive profile questions) and, for versions with policy groups, policy group.
    """
    with _threadpool_limit():
        return _compute_run(forms, methodology, frame_sizes, domains)


def _compute_run(forms: AcceptedForms, methodology: Methodology, frame_sizes: Mapping[str, int],
                 domains: Sequence[str] | None) -> RunResult:
    agg = methodology.aggregation
    thresholds = Thresholds(agg.suppress_below, agg.unreliable_below, agg.unreliable_cv)
    design = index_design(methodology)
    items = design.items
    k = len(items)
    n = forms.n
    answers = answer_matrix(forms.answers, items)

    s_codes, s_labels = _factorize(np.array(forms.stratum, dtype=object))
    s_labels = [str(s) for s in s_labels]
    base = np.asarray(forms.weight, dtype=np.float64)
    w, nr = nonresponse_adjusted(base, s_codes, s_labels, frame_sizes)

    # Clusters: a PSU label repeated within a stratum means a multi-stage draw.
    psu = np.array(forms.psu, dtype=object)
    pairs = {(s, p) for s, p in zip(forms.stratum, forms.psu)}
    clustered = len(pairs) < n
    # First-stage fpc: frame sizes count units, which are the PSUs of a single-stage draw only.
    # In a clustered draw the number of PSUs in the frame is not known here: no fpc
    # (with-replacement variance, slightly conservative).
    fpc = None
    if not clustered and frame_sizes:
        sizes = np.array([float(frame_sizes.get(s, np.inf)) for s in s_labels])
        n_h = np.bincount(s_codes, minlength=len(s_labels))
        sizes = np.where(sizes >= n_h, sizes, np.inf)  # inconsistent size: no correction there
        fpc = sizes[s_codes]
    sample = SampleDesign(s_codes, psu if clustered else None, fpc, lonely_psu="adjust")
    srs = SampleDesign(np.zeros(n, dtype=np.int64))  # used for clustered draws only
    est = _Estimator(sample, srs, w)

    low = min(design.satisfied)
    lookup = np.zeros(7, dtype=bool)
    lookup[np.asarray(design.satisfied) + 1] = True
    top = design.satisfied == tuple(range(low, 6))

    def get_ya(rows: np.ndarray):
        block = np.take(answers, rows, axis=1)  # (items, rows); ~4x faster than answers[:, rows]
        y = block >= low if top else lookup[block + 1]
        return y, block >= 1

    valid = answers >= 1  # (k, n)
    by_kind: dict[str, list[dict[str, Any]]] = {}  # cells of each domain kind
    headline = agg.weighting
    province_values: dict[str, dict[str, float | None]] = {}

    profile_groups = [q.code for q in methodology.profile if not q.sensitive]
    kinds: list[tuple[str, str | None, Sequence[str | None]]] = [
        ("nation", None, []),
        ("province", None, forms.province),
        ("commune", None, forms.commune),
        ("level", None, forms.level),
        ("field", None, forms.field),
        ("procedure", None, forms.procedure),
        ("respondent_group", "respondent_type", forms.respondent_type),
        ("respondent_group", "channel", forms.channel),
    ]
    for q in profile_groups:
        vals = list(map(operator.methodcaller("get", q), forms.answers))
        if not set(map(type, vals)) <= {str, type(None)}:
            vals = [v if isinstance(v, str) else None for v in vals]
        kinds.append(("respondent_group", q, vals))
    if domains is not None:
        kinds = [kd for kd in kinds if kd[0] in domains]

    # Expectation: y = chose option o, a = answered the question (a non-empty list); (options, n).
    exp = methodology.expectation
    exp_codes = [o.code for o in exp.options]
    chosen = np.zeros((len(exp_codes), n), dtype=bool)
    answered = np.zeros((len(exp_codes), n), dtype=bool)
    option_pos = {o: j for j, o in enumerate(exp_codes)}
    rows_answered, picks_i, picks_j = [], [], []
    for i, v in enumerate(map(operator.methodcaller("get", exp.code), forms.answers)):
        if v.__class__ is list and v:
            rows_answered.append(i)
            for o in v:
                j = option_pos.get(o) if o.__class__ is str else None
                if j is not None:
                    picks_i.append(i)
                    picks_j.append(j)
    answered[:, rows_answered] = True
    chosen[picks_j, picks_i] = True

    nation_est: dict[str, RatioEstimates] = {}
    province_var: dict[str, dict[str, dict[tuple[str, str], tuple[float, float, int]]]] = {"design": {}, "none": {}}

    for kind, group, labels in kinds:
        if kind == "nation":
            codes, names = np.zeros(n, dtype=np.int64), [NATION]
        else:
            codes, names = _domain_codes(labels)
        D = len(names)
        res = est.by_domain(get_ya, k, codes, D)
        keep = np.array([u != _NONE for u in names], dtype=bool)
        dom_codes = [NATION + ":pooled" if kind == "nation" else (f"{group}:{u}" if group else u) for u in names]
        if kind == "nation":
            nation_est = {name: res[name][0] for name in ("design", "none", "srs")}
        kind_cells = by_kind.setdefault(kind, [])
        kind_cells += _domain_cells(kind, dom_codes, keep, res, design, items, kind in ITEM_DOMAINS, codes, valid,
                                    thresholds, province_var if kind == "province" else None, names)
        if kind in EXPECTATION_DOMAINS:
            exp_res = est.by_domain(lambda rows: (np.take(chosen, rows, axis=1), np.take(answered, rows, axis=1)), len(exp_codes), codes, D)
            kind_cells += _expectation_cells(kind, dom_codes, keep, exp_res, exp_codes, thresholds)

    # National figure: pooled (above) and mean of provinces; ``VN`` repeats the headline one.
    nested = _strata_nest_in_provinces(s_codes, _domain_codes(forms.province)[0])
    national_rule = agg.national
    nation_cells = by_kind.setdefault("nation", [])
    if province_var["design"]:
        pooled = {(c["indicator"], c["code"], c["weighting"]): c for c in nation_cells
                  if c["domain_code"] == NATION + ":pooled"}
        n_total = {key[:2]: c["n"] for key, c in pooled.items()}
        for wname in ("none", "design"):
            by_ind: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for prov in province_var[wname].values():
                for key, (value, var, _) in prov.items():
                    if value is not None:
                        by_ind.setdefault(key, []).append((value, var))
            for key in sorted(n_total):
                vals = by_ind.get(key, [])
                value = float(np.mean([v for v, _ in vals])) if vals else None
                var = (sum(v for _, v in vals) / len(vals) ** 2) if (vals and nested) else None
                cell = make_cell("nation", NATION + ":mean_of_provinces", key[0], key[1], wname, value, var,
                                 n_total[key], None, thresholds)
                nation_cells.append(cell)
        headline_code = NATION + (":pooled" if national_rule == "pooled" else ":mean_of_provinces")
        nation_cells += [{**c, "domain_code": NATION} for c in nation_cells if c["domain_code"] == headline_code]
    elif nation_est:
        nation_cells += [{**c, "domain_code": NATION} for c in nation_cells]

    # Policy groups (2023+): the policy part restricted to one group's items, nationally.
    if methodology.policy_groups and nation_est and (domains is None or "policy_group" in domains):
        by_kind["policy_group"] = _policy_group_cells(methodology, design, items, nation_est, valid, thresholds)

    for c in by_kind.get("province", []):
        if c["weighting"] == headline and c["indicator"] in ("sipas", "element"):
            province_values.setdefault(c["domain_code"], {})[c["code"]] = c["value"]
    national = next((c["value"] for c in nation_cells if c["domain_code"] == NATION
                     and c["indicator"] == "sipas" and c["weighting"] == headline), None)
    parameters = {
        "aggregation": agg.model_dump(mode="json"),
        "items": list(items),
        "elements": {e: list(v) for e, v in design.elements.items()},
        "parts": {p: list(v) for p, v in (design.parts or {}).items()},
        "clustered": clustered,
        "fpc": "frame sizes (single-stage)" if fpc is not None else "none",
        "lonely_psu": "adjust",
        "nonresponse_adjustment": nr,
        "strata": len(s_labels),
        "strata_nest_in_provinces": nested,
        "confidence": 0.95,
        "respondent_groups": ["respondent_type", "channel", *profile_groups],
    }
    cells = list(itertools.chain.from_iterable(by_kind.values()))
    cells.sort(key=operator.itemgetter("domain", "domain_code", "indicator", "code", "weighting"))
    return RunResult(cells=cells, parameters=parameters, headline_weighting=headline, national_sipas=national,
                     province_values=province_values)


def _strata_nest_in_provinces(s_codes: np.ndarray, p_codes: np.ndarray) -> bool:
    """True when every stratum lies in one province: provinces are then independent samples, so
    the variance of the mean of provinces is Σ_p Var(θ_p) / P² exactly."""
    if not s_codes.shape[0]:
        return True
    pairs = np.unique(s_codes * (int(p_codes.max()) + 1) + p_codes)
    return pairs.shape[0] == np.unique(s_codes).shape[0]


def _policy_group_cells(methodology: Methodology, design: Design, items: Sequence[str],
                        nation: dict[str, RatioEstimates], valid: np.ndarray,
                        thresholds: Thresholds) -> list[dict[str, Any]]:
    pos = {c: j for j, c in enumerate(items)}
    policy_elements = {p.code: [e.code for e in p.elements] for p in methodology.parts}
    cells = []
    for group in methodology.policy_groups:
        g_items = [i.code for i in methodology.items() if i.policy_group == group.code and i.code in pos]
        if not g_items:
            continue
        elements = {e: tuple(c for c in design.elements[e] if c in g_items) for e in design.elements}
        elements = {e: v for e, v in elements.items() if v}
        parts = {p: tuple(e for e in es if e in elements) for p, es in policy_elements.items()}
        parts = {p: v for p, v in parts.items() if v}
        sub = Design(elements=elements, satisfied=design.satisfied, parts=parts)
        available = np.isfinite(nation["design"].ratio)
        for ind in indicators_for(sub, items, available & np.isin(np.array(items), g_items), True):
            if ind.indicator == "sipas":
                continue  # a group's "overall" is its policy part
            if ind.indicator == "item" and ind.coef is None and ind.code not in g_items:
                continue
            used = ind.coef != 0 if ind.coef is not None else None
            n_ind = 0 if used is None else int(valid[used].any(axis=0).sum())
            srs_var = None if ind.coef is None else _quad(ind.coef, nation["srs"].cov)
            for wname in ("none", "design"):
                r = nation[wname]
                value = None if ind.coef is None else _value(ind.coef, r.ratio)
                var = None if ind.coef is None else _quad(ind.coef, r.cov)
                cells.append(make_cell("policy_group", group.code, ind.indicator, ind.code, wname, value, var,
                                       n_ind, srs_var, thresholds))
    return cells


# --------------------------------------------------------------------------------------------------
# Rankings
# --------------------------------------------------------------------------------------------------


def competition_ranks(values: Mapping[str, float | None], decimals: int = 2) -> dict[str, int | None]:
    """Standard competition ranking ("1, 2, 2, 4"), highest value first. Values are compared as
    published (rounded to ``decimals``), so provinces that print the same share the rank.
    Provinces without a value (suppressed) get no rank."""
    ranked = sorted(((round(v, decimals), p) for p, v in values.items() if v is not None), key=lambda t: -t[0])
    out: dict[str, int | None] = {p: None for p in values}
    prev, rank = None, 0
    for pos, (v, p) in enumerate(ranked, start=1):
        if v != prev:
            rank, prev = pos, v
        out[p] = rank
    return out
