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
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.indexing.estimation import (
    BLANK,
    NOT_APPLICABLE,
    Design,
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


def answer_matrix(answers: Sequence[Mapping[str, Any]], items: Sequence[str]) -> np.ndarray:
    """(n, k) int8 codes: 1–5, 0 = blank (or anything not a 1–5 code), -1 = ``na``."""
    out = np.zeros((len(answers), len(items)), dtype=np.int8)
    for j, code in enumerate(items):
        col = out[:, j]
        for i, ans in enumerate(answers):
            v = ans.get(code)
            if type(v) is int and 1 <= v <= 5:
                col[i] = v
            elif v == "na":
                col[i] = NOT_APPLICABLE
    return out


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


def _domain_labels(values: Sequence[str | None]) -> np.ndarray:
    return np.array([_NONE if v is None or v == "" else str(v) for v in values], dtype=object)


class _Estimator:
    """The three estimates every domain needs, from one prepared design each:

    * ``design``: weights w* (nonresponse-adjusted), SE under strata, clusters and fpc;
    * ``none``: weights 1 (the official figure), SE under the same design;
    * ``srs``: weights 1, one stratum, no clusters, no fpc -- the variance a simple random sample
      of the same n would give, the denominator of the design effect.
    """

    def __init__(self, sample: SampleDesign, srs: SampleDesign, w: np.ndarray):
        self.sample, self.srs, self.w = sample, srs, w
        self.ones = np.ones_like(w)

    def by_domain(self, get_ya, k: int, codes: np.ndarray, n_domains: int) -> dict[str, list[RatioEstimates]]:
        # SampleDesign._domains is the estimator's chunked two-pass core (also used by
        # estimation.estimate): it lets y, a be derived chunk by chunk instead of materialised.
        return {
            "design": self.sample._domains(get_ya, k, self.w, codes, n_domains=n_domains),
            "none": self.sample._domains(get_ya, k, self.ones, codes, n_domains=n_domains),
            "srs": self.srs._domains(get_ya, k, self.ones, codes, n_domains=n_domains),
        }


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
    srs = SampleDesign(np.zeros(n, dtype=np.int64))
    est = _Estimator(sample, srs, w)

    low = min(design.satisfied)
    lookup = np.zeros(7, dtype=bool)
    lookup[np.asarray(design.satisfied) + 1] = True
    top = design.satisfied == tuple(range(low, 6))

    def get_ya(rows: np.ndarray):
        block = answers[rows]
        y = block >= low if top else lookup[block + 1]
        return y, block >= 1

    valid = answers >= 1
    cells: list[dict[str, Any]] = []
    headline = agg.weighting
    province_values: dict[str, dict[str, float | None]] = {}

    profile_groups = [q.code for q in methodology.profile if not q.sensitive]
    kinds: list[tuple[str, str | None, np.ndarray]] = [
        ("nation", None, np.full(n, NATION, dtype=object)),
        ("province", None, _domain_labels(forms.province)),
        ("commune", None, _domain_labels(forms.commune)),
        ("level", None, _domain_labels(forms.level)),
        ("field", None, _domain_labels(forms.field)),
        ("procedure", None, _domain_labels(forms.procedure)),
        ("respondent_group", "respondent_type", _domain_labels(forms.respondent_type)),
        ("respondent_group", "channel", _domain_labels(forms.channel)),
    ]
    for q in profile_groups:
        vals = [a.get(q) if isinstance(a.get(q), str) else None for a in forms.answers]
        kinds.append(("respondent_group", q, _domain_labels(vals)))
    if domains is not None:
        kinds = [kd for kd in kinds if kd[0] in domains]

    # Expectation: y = chose option o, a = answered the question (a non-empty list).
    exp = methodology.expectation
    exp_codes = [o.code for o in exp.options]
    chosen = np.zeros((n, len(exp_codes)), dtype=bool)
    answered = np.zeros((n, len(exp_codes)), dtype=bool)
    for i, ans in enumerate(forms.answers):
        v = ans.get(exp.code)
        if isinstance(v, list) and v:
            answered[i, :] = True
            for j, o in enumerate(exp_codes):
                chosen[i, j] = o in v

    nation_est: dict[str, RatioEstimates] = {}
    province_var: dict[str, dict[str, dict[tuple[str, str], tuple[float, float, int]]]] = {"design": {}, "none": {}}

    for kind, group, labels in kinds:
        codes, uniq = _factorize(labels)
        D = len(uniq)
        res = est.by_domain(get_ya, k, codes, D)
        with_items = kind in ITEM_DOMAINS
        exp_res = None
        if kind in EXPECTATION_DOMAINS:
            exp_res = est.by_domain(lambda rows: (chosen[rows], answered[rows]), len(exp_codes), codes, D)
        support_counts: dict[bytes, np.ndarray] = {}

        def respondents_with_any(coef: np.ndarray, d: int) -> int:
            # n of a composite: respondents of the domain with a valid answer to any of its items
            used = coef != 0
            key = used.tobytes()
            if key not in support_counts:
                support_counts[key] = np.bincount(codes, weights=valid[:, used].any(axis=1), minlength=D)
            return int(support_counts[key][d])

        for d, label in enumerate(uniq):
            label = str(label)
            if label == _NONE:
                continue
            code_out = f"{group}:{label}" if group else label
            r_w, r_u, r_s = res["design"][d], res["none"][d], res["srs"][d]
            available = np.isfinite(r_w.ratio)
            if kind == "nation":
                nation_est = {"design": r_w, "none": r_u, "srs": r_s}
            inds = indicators_for(design, items, available, with_items)
            # Every indicator's value and variance in one matrix product per estimate:
            # v = C·R and diag(C V Cᵀ) (unused columns have coefficient 0; NaN there counts as 0).
            C = np.array([ind.coef if ind.coef is not None else np.zeros(k) for ind in inds])
            quads = {name: _quads(C, r.cov) for name, r in (("none", r_u), ("design", r_w), ("srs", r_s))}
            values = {name: C @ np.nan_to_num(r.ratio, nan=0.0) for name, r in (("none", r_u), ("design", r_w))}
            for pos, ind in enumerate(inds):
                if ind.coef is None:
                    n_ind = 0
                elif ind.indicator == "item":
                    n_ind = int(r_w.n[np.flatnonzero(ind.coef)[0]])
                else:
                    n_ind = respondents_with_any(ind.coef, d)
                srs_var = None if ind.coef is None else float(quads["srs"][pos])
                for wname in ("none", "design"):
                    if ind.coef is None:
                        value = var = None
                    else:
                        value, var = float(values[wname][pos]), float(quads[wname][pos])
                    dom_code = NATION + ":pooled" if kind == "nation" else code_out
                    cells.append(make_cell(kind, dom_code, ind.indicator, ind.code, wname, value, var, n_ind,
                                           srs_var, thresholds))
                    if kind == "province":
                        province_var[wname].setdefault(label, {})[(ind.indicator, ind.code)] = (
                            value, var, n_ind)
            if exp_res is not None:
                e_w, e_u, e_s = exp_res["design"][d], exp_res["none"][d], exp_res["srs"][d]
                for j, o in enumerate(exp_codes):
                    n_o = int(e_w.n[j])
                    srs_var = float(e_s.cov[j, j]) if np.isfinite(e_s.cov[j, j]) else None
                    for wname, r in (("none", e_u), ("design", e_w)):
                        value = float(r.ratio[j]) if np.isfinite(r.ratio[j]) else None
                        var = float(r.cov[j, j]) if value is not None else None
                        dom_code = NATION + ":pooled" if kind == "nation" else code_out
                        cells.append(make_cell(kind, dom_code, "expectation", o, wname, value, var, n_o, srs_var,
                                               thresholds))

    # National figure: pooled (above) and mean of provinces; ``VN`` repeats the headline one.
    nested = _strata_nest_in_provinces(forms)
    national_rule = agg.national
    if province_var["design"]:
        pooled = {(c["indicator"], c["code"], c["weighting"]): c for c in cells
                  if c["domain"] == "nation" and c["domain_code"] == NATION + ":pooled"}
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
                cells.append(cell)
        headline_code = NATION + (":pooled" if national_rule == "pooled" else ":mean_of_provinces")
        for c in [c for c in cells if c["domain"] == "nation" and c["domain_code"] == headline_code]:
            cells.append({**c, "domain_code": NATION})
    elif nation_est:
        for c in [c for c in cells if c["domain"] == "nation"]:
            cells.append({**c, "domain_code": NATION})

    # Policy groups (2023+): the policy part restricted to one group's items, nationally.
    if methodology.policy_groups and nation_est and (domains is None or "policy_group" in domains):
        cells += _policy_group_cells(methodology, design, items, nation_est, valid, thresholds)

    for c in cells:
        if c["domain"] == "province" and c["weighting"] == headline and c["indicator"] in ("sipas", "element"):
            province_values.setdefault(c["domain_code"], {})[c["code"]] = c["value"]
    national = next((c["value"] for c in cells if c["domain"] == "nation" and c["domain_code"] == NATION
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
    cells.sort(key=lambda c: (c["domain"], c["domain_code"], c["indicator"], c["code"], c["weighting"]))
    return RunResult(cells=cells, parameters=parameters, headline_weighting=headline, national_sipas=national,
                     province_values=province_values)


def _strata_nest_in_provinces(forms: AcceptedForms) -> bool:
    """True when every stratum lies in one province: provinces are then independent samples, so
    the variance of the mean of provinces is Σ_p Var(θ_p) / P² exactly."""
    seen: dict[str, str | None] = {}
    for s, p in zip(forms.stratum, forms.province):
        if seen.setdefault(s, p) != p:
            return False
    return True


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
            n_ind = 0 if used is None else int(valid[:, used].any(axis=1).sum())
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
