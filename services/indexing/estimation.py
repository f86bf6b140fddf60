"""Design-based estimation of the SIPAS indices (methodology.md §4), pure numpy.

Why this module exists on its own: every published SIPAS figure is a smooth function of weighted
ratios (satisfied answers over valid answers), and its standard error must come from the design
that actually drew the sample (strata, clusters, finite-population correction).  Keeping the
estimator free of databases and web code lets it be checked number for number against R's
``survey`` package (``tests/fixtures/estimation-check``), benchmarked on national-size data, and
reused unchanged by the indexing service.

Layers, from general to SIPAS-specific:

* :class:`SampleDesign` / :func:`ratio_estimates` — ratios ``R_c = Σ w y_c / Σ w a_c`` for any
  number of columns and domains, with their full Taylor-linearised covariance matrix under a
  stratified (multi-stage) design, like ``svyby(..., svyratio, covmat=TRUE)``.
* :func:`linear_combination` / :func:`composite_indices` — element, part and overall indices as
  linear combinations of item ratios, with SE from the covariance (not an average of SEs).
* :func:`estimate` — the whole SIPAS table (national, per province, unweighted official figures)
  in the JSON shape of ``expected.json``.
* :func:`read_responses_csv`, :func:`read_design_json` — tolerant readers that turn bad input into
  one clear :class:`EstimationInputError`.

The formulas, with a worked example, are in ``docs/method/estimation.md``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

__all__ = [
    "BLANK",
    "NOT_APPLICABLE",
    "LONELY_PSU_RULES",
    "EstimationInputError",
    "Design",
    "Responses",
    "SampleDesign",
    "RatioEstimates",
    "ratio_estimates",
    "linear_combination",
    "composite_indices",
    "estimate",
    "read_responses_csv",
    "read_design_json",
]

#: Answer codes held in :attr:`Responses.answers`.  Both count as "not answered" (a_ic = 0); they
#: are kept apart because the methodology distinguishes a blank from "did not apply" (§3) and a
#: later report may want both counts.
BLANK = 0
NOT_APPLICABLE = -1

#: How a stratum with a single PSU contributes to the variance (see :class:`SampleDesign`).
LONELY_PSU_RULES = ("adjust", "certainty", "fail")

#: Columns of a responses file that are never satisfaction items (used when no item list is given).
METADATA_COLUMNS = frozenset(
    {"respondent_id", "form_code", "province", "commune", "level", "field", "procedure", "stratum", "psu",
     "fpc", "weight", "channel"}
)

_DEFAULT_CHUNK_ROWS = 1 << 19  # rows per chunk: bounds memory at ~ chunk × items × 8 bytes per array
_CACHE_BYTES = 256 << 20  # keep PSU totals between the two passes when they fit in this budget


class EstimationInputError(ValueError):
    """Input the estimator cannot use; ``message`` names the file, row and column when known.

    A ``ValueError`` so generic callers still catch it; the CLI turns it into exit code 2 and the
    service into a problem+json response.
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Design:
    """What to compute: items within elements (and optionally elements within parts).

    ``elements`` and ``parts`` keep their order, which is the order of the output.  ``parts`` is
    absent for the 2017 method (SIPAS = mean of elements) and present from 2023 (SIPAS = mean of
    parts).  ``clustered`` is informative: when ``False`` the responses must not repeat a PSU
    within a stratum (a mismatch means the file or the design card is wrong, and silently
    ignoring clusters would understate the SE); when ``True`` a ``psu`` column is required.
    ``lonely_psu`` chooses the single-PSU-stratum rule (see :class:`SampleDesign`).
    """

    elements: Mapping[str, tuple[str, ...]]
    satisfied: tuple[int, ...] = (4, 5)
    parts: Mapping[str, tuple[str, ...]] | None = None
    clustered: bool | None = None
    lonely_psu: str = "adjust"
    description: str | None = None

    @property
    def items(self) -> tuple[str, ...]:
        """Item codes in output order (first appearance across elements)."""
        return tuple(dict.fromkeys(c for items in self.elements.values() for c in items))

    @classmethod
    def from_dict(cls, data: Any, source: str = "design") -> Design:
        """Validate a design card (the JSON object of ``design.json``)."""
        if not isinstance(data, Mapping):
            raise EstimationInputError(f"{source}: expected a JSON object")
        raw_elements = data.get("elements")
        if not isinstance(raw_elements, Mapping) or not raw_elements:
            raise EstimationInputError(f"{source}: 'elements' must be a non-empty object element -> [items]")
        elements: dict[str, tuple[str, ...]] = {}
        for name, items in raw_elements.items():
            if (not isinstance(items, list) or not items
                    or not all(isinstance(c, str) and c.strip() for c in items)):
                raise EstimationInputError(f"{source}: element '{name}' must list at least one item code")
            if len(set(items)) != len(items):
                raise EstimationInputError(f"{source}: element '{name}' lists an item twice")
            elements[str(name)] = tuple(items)

        satisfied = data.get("satisfied", [4, 5])
        if (not isinstance(satisfied, list) or not satisfied
                or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 5 for v in satisfied)):
            raise EstimationInputError(f"{source}: 'satisfied' must be a non-empty list of answers 1-5")

        parts = None
        if data.get("parts") is not None:
            raw_parts = data["parts"]
            if not isinstance(raw_parts, Mapping) or not raw_parts:
                raise EstimationInputError(f"{source}: 'parts' must be a non-empty object part -> [elements]")
            parts = {}
            seen: dict[str, str] = {}
            for pname, pelements in raw_parts.items():
                if not isinstance(pelements, list) or not pelements:
                    raise EstimationInputError(f"{source}: part '{pname}' must list at least one element")
                for e in pelements:
                    if e not in elements:
                        raise EstimationInputError(f"{source}: part '{pname}' names unknown element '{e}'")
                    if e in seen:
                        raise EstimationInputError(
                            f"{source}: element '{e}' is in both part '{seen[e]}' and part '{pname}'")
                    seen[e] = str(pname)
                parts[str(pname)] = tuple(pelements)
            missing = [e for e in elements if e not in seen]
            if missing:
                raise EstimationInputError(f"{source}: element(s) {', '.join(missing)} belong to no part")

        clustered = data.get("clustered")
        if clustered is not None and not isinstance(clustered, bool):
            raise EstimationInputError(f"{source}: 'clustered' must be true or false")
        lonely = data.get("lonely_psu", "adjust")
        if lonely not in LONELY_PSU_RULES:
            raise EstimationInputError(f"{source}: 'lonely_psu' must be one of {', '.join(LONELY_PSU_RULES)}")
        description = data.get("design")
        return cls(
            elements=elements,
            satisfied=tuple(sorted(set(satisfied))),
            parts=parts,
            clustered=clustered,
            lonely_psu=lonely,
            description=description if isinstance(description, str) else None,
        )


@dataclass(frozen=True, eq=False)
class Responses:
    """Accepted forms of one wave, column-wise (one row per respondent).

    ``answers`` is an (n, k) integer array: 1–5, :data:`BLANK` or :data:`NOT_APPLICABLE`, in the
    order of ``items``.  ``stratum``, ``psu`` and ``province`` hold labels of any hashable type
    (strings from a CSV, integer codes from the database).  PSU labels are read *within* their
    stratum (R's ``nest=TRUE``): the same label in two strata is two PSUs.  ``psu=None`` means
    every respondent is their own PSU (single-stage).  ``fpc`` is the stratum's population size in
    PSUs (N_h), constant within a stratum; ``None`` means no finite-population correction.
    """

    items: tuple[str, ...]
    answers: np.ndarray
    weight: np.ndarray
    stratum: np.ndarray
    province: np.ndarray
    psu: np.ndarray | None = None
    fpc: np.ndarray | None = None

    def __post_init__(self) -> None:
        answers = np.asarray(self.answers)
        if answers.ndim != 2 or answers.shape[1] != len(self.items):
            raise EstimationInputError(
                f"answers must be an (n, {len(self.items)}) array, one column per item; got shape {answers.shape}")
        if not np.issubdtype(answers.dtype, np.integer):
            raise EstimationInputError("answers must hold integer codes (1-5, 0 = blank, -1 = na)")
        n = answers.shape[0]
        bad = (answers < NOT_APPLICABLE) | (answers > 5)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise EstimationInputError(
                f"data row {r + 1}, column '{self.items[c]}': answer {answers[r, c]} is not 1-5, blank or na")
        if len(set(self.items)) != len(self.items):
            raise EstimationInputError("responses list an item column twice")
        weight = np.asarray(self.weight, dtype=np.float64)
        for name in ("weight", "stratum", "province", "psu", "fpc"):
            value = getattr(self, name)
            if value is not None and np.shape(value) != (n,):
                raise EstimationInputError(
                    f"{name} must have one value per response row ({n}); got {np.shape(value)}")
        bad_w = ~(np.isfinite(weight) & (weight > 0))
        if bad_w.any():
            r = int(np.flatnonzero(bad_w)[0])
            raise EstimationInputError(
                f"data row {r + 1}, column 'weight': weight {weight[r]!r} is not a positive number")
        if self.fpc is not None:
            fpc = np.asarray(self.fpc, dtype=np.float64)
            bad_f = ~(fpc > 0)
            if bad_f.any():
                r = int(np.flatnonzero(bad_f)[0])
                raise EstimationInputError(
                    f"data row {r + 1}, column 'fpc': {fpc[r]!r} is not a positive population size")
            object.__setattr__(self, "fpc", fpc)
        object.__setattr__(self, "answers", answers)
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "stratum", np.asarray(self.stratum))
        object.__setattr__(self, "province", np.asarray(self.province))
        if self.psu is not None:
            object.__setattr__(self, "psu", np.asarray(self.psu))

    @property
    def n(self) -> int:
        return int(self.answers.shape[0])


# --------------------------------------------------------------------------------------------------
# Ratios and their covariance under the design
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RatioEstimates:
    """Ratios of one domain with their linearised covariance.

    Columns whose denominator total is zero (nobody in the domain answered the item) have ratio
    NaN and NaN rows/columns in ``cov``; :func:`composite_indices` turns them into ``None``.
    ``n`` counts rows with a non-zero denominator value (valid answers, for suppression rules), and
    ``unweighted_*`` are the same sums with every weight 1, which give the official unweighted
    figure from the same pass over the data.
    """

    ratio: np.ndarray
    cov: np.ndarray
    numerator: np.ndarray
    denominator: np.ndarray
    n: np.ndarray
    unweighted_numerator: np.ndarray
    unweighted_denominator: np.ndarray

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.cov), 0.0, None))

    @property
    def unweighted_ratio(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.unweighted_denominator > 0,
                            self.unweighted_numerator / self.unweighted_denominator, np.nan)


def _factorize(labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes 0..G-1 (in sorted label order) and the labels, for np.bincount/reduceat."""
    arr = np.asarray(labels)
    if arr.dtype == object:
        try:
            uniques, codes = np.unique(arr, return_inverse=True)
        except TypeError:  # mixed label types: compare as text, keep the first label of each
            text = arr.astype(str)
            _, first, codes = np.unique(text, return_index=True, return_inverse=True)
            uniques = arr[first]
    else:
        uniques, codes = np.unique(arr, return_inverse=True)
    return codes.reshape(-1).astype(np.int64), uniques


class SampleDesign:
    """A stratified single- or multi-stage design, prepared once and reused for many estimates.

    Variance is the "ultimate cluster" Taylor-linearisation estimator of R's ``svyrecvar`` at the
    first stage: PSU totals of the linearised variable, centred within each stratum, with
    ``(1 - f_h) n_h / (n_h - 1)``, where ``n_h`` is the number of sampled PSUs in stratum h and
    ``f_h = n_h / N_h`` (N_h from ``fpc``; no fpc means f_h = 0, with-replacement style).  Later
    stages add no term: with a first-stage fpc and no later-stage fpc R does the same, and with
    f_h small the ultimate-cluster estimator is the standard approximation.

    Domains keep the full design (R's ``svyby``/``subset``): rows outside the domain have
    z = 0, ``n_h`` counts every sampled PSU of the stratum, and PSUs without domain members enter
    the stratum's sum of squares as zeros.  Hence a domain's SE reflects its random sample size.

    Strata with a single PSU (``n_h = 1``) have no within-stratum variance estimate.  R's default
    (``options(survey.lonely.psu = "fail")``) stops.  Rules here:

    * ``"adjust"`` (default) — R's/Stata's conservative rule: the lone PSU's total is centred at
      the grand mean of PSU totals instead of its stratum mean, with factor ``(1 - f_h)``.  For a
      ratio the linearised variable sums to zero over the sample, so that centre is 0 and the
      stratum adds ``(1 - f_h) z_h1 z_h1ᵀ``: it never understates the variance.
    * ``"certainty"`` — the stratum is treated as taken with certainty and adds nothing (right
      only for genuinely self-representing units).
    * ``"fail"`` — refuse, like R's default.

    ``chunk_rows`` bounds memory: rows are processed in chunks of about that many rows (a PSU is
    never split), so 10M respondents × 22 items need a few hundred MB, not tens of GB.
    """

    def __init__(self, strata: Any, psu: Any = None, fpc: Any = None, *, lonely_psu: str = "adjust",
                 chunk_rows: int = _DEFAULT_CHUNK_ROWS):
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be positive")
        self.chunk_rows = int(chunk_rows)
        if lonely_psu not in LONELY_PSU_RULES:
            raise ValueError(f"lonely_psu must be one of {LONELY_PSU_RULES}, got {lonely_psu!r}")
        s_codes, s_labels = _factorize(strata)
        n = s_codes.shape[0]
        H = len(s_labels)
        if psu is None:
            # Each row its own PSU; codes ordered by stratum so (domain, psu) order implies stratum order.
            order = np.argsort(s_codes, kind="stable")
            psu_code = np.empty(n, dtype=np.int64)
            psu_code[order] = np.arange(n, dtype=np.int64)
            psu_stratum = s_codes[order]
        else:
            p_codes, _ = _factorize(psu)
            if p_codes.shape[0] != n:
                raise EstimationInputError("psu must have one value per response row")
            key = s_codes * (int(p_codes.max(initial=0)) + 1) + p_codes  # PSUs nested in strata
            uniq, psu_code = np.unique(key, return_inverse=True)
            psu_code = psu_code.reshape(-1).astype(np.int64)
            psu_stratum = np.empty(len(uniq), dtype=np.int64)
            psu_stratum[psu_code] = s_codes
        n_h = np.bincount(psu_stratum, minlength=H).astype(np.float64)

        if fpc is None:
            f_h = np.zeros(H)
            N_h = np.full(H, np.inf)
        else:
            fpc = np.asarray(fpc, dtype=np.float64)
            if fpc.shape != (n,):
                raise EstimationInputError("fpc must have one value per response row")
            first = np.full(H, -1, dtype=np.int64)
            first[s_codes[::-1]] = np.arange(n - 1, -1, -1)  # first row of each stratum
            N_h = fpc[first]
            differ = fpc != N_h[s_codes]
            if differ.any():
                r = int(np.flatnonzero(differ)[0])
                raise EstimationInputError(
                    f"data row {r + 1}, column 'fpc': {fpc[r]:g} differs from {N_h[s_codes[r]]:g} given for "
                    f"stratum '{s_labels[s_codes[r]]}' (fpc is the stratum's population size, constant within it)")
            small = N_h < n_h
            if small.any():
                h = int(np.flatnonzero(small)[0])
                raise EstimationInputError(
                    f"stratum '{s_labels[h]}': fpc {N_h[h]:g} is smaller than its {int(n_h[h])} sampled PSUs "
                    "(fpc must be the population size N_h in PSUs, not a sampling fraction)")
            f_h = n_h / N_h

        lonely = n_h == 1
        if lonely.any() and lonely_psu == "fail":
            h = int(np.flatnonzero(lonely)[0])
            raise EstimationInputError(
                f"stratum '{s_labels[h]}' has only one PSU, so its variance cannot be estimated "
                "(choose lonely_psu 'adjust' or 'certainty')")
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(n_h > 1, (1.0 - f_h) * n_h / (n_h - 1.0), 0.0)
        if lonely_psu == "adjust":
            scale = np.where(lonely, 1.0 - f_h, scale)
        self.lonely_psu = lonely_psu
        self.n_rows = n
        self.stratum_labels = s_labels
        self.stratum_code = s_codes
        self.psu_code = psu_code
        self.psu_stratum = psu_stratum
        self.n_psu = psu_stratum.shape[0]
        self.n_h = n_h
        self.N_h = N_h
        self.f_h = f_h
        self.lonely = lonely
        #: per-stratum factor multiplying the centred sum of squares: (1-f_h) n_h/(n_h-1)
        self.scale = scale
        # Lone PSUs under "adjust" are centred at the grand mean (0 for linearised ratios).
        self._centre = ~lonely if lonely_psu == "adjust" else np.ones(H, dtype=bool)

    @property
    def n_strata(self) -> int:
        return int(self.n_h.shape[0])

    # -- public entry points ------------------------------------------------------------------

    def ratio_estimates(self, y: Any, a: Any, w: Any, domain_mask: Any = None) -> RatioEstimates:
        """Ratios Σw·y/Σw·a (per column) in one domain (``domain_mask``; all rows if ``None``)."""
        y, a, w = self._check_arrays(y, a, w)
        if domain_mask is None:
            return self._domains(lambda rows: (y[rows], a[rows]), y.shape[1], w, None)[0]
        mask = np.asarray(domain_mask, dtype=bool)
        if mask.shape != (self.n_rows,):
            raise ValueError("domain_mask must have one value per row")
        rows = np.flatnonzero(mask)
        return self._domains(lambda r: (y[r], a[r]), y.shape[1], w, np.zeros(rows.shape[0], np.int64),
                             rows=rows, n_domains=1)[0]

    def domain_ratios(self, y: Any, a: Any, w: Any, domains: Any) -> dict[Hashable, RatioEstimates]:
        """Ratios for every domain label in ``domains`` (one label per row), in one pass per stage.

        Domains may cut across strata and PSUs (e.g. gender); each keeps the full design.
        """
        y, a, w = self._check_arrays(y, a, w)
        codes, labels = _factorize(domains)
        if codes.shape[0] != self.n_rows:
            raise ValueError("domains must have one label per row")
        res = self._domains(lambda rows: (y[rows], a[rows]), y.shape[1], w, codes, n_domains=len(labels))
        return {_plain(label): res[d] for d, label in enumerate(labels)}

    # -- internals ------------------------------------------------------------------------------

    def _check_arrays(self, y: Any, a: Any, w: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y = np.asarray(y)
        a = np.asarray(a)
        if y.ndim == 1:
            y = y[:, None]
        if a.ndim == 1:
            a = a[:, None]
        w = np.asarray(w, dtype=np.float64)
        if y.shape != a.shape or y.shape[0] != self.n_rows or w.shape != (self.n_rows,):
            raise ValueError(f"y, a must be ({self.n_rows}, k) and w ({self.n_rows},); "
                             f"got {y.shape}, {a.shape}, {w.shape}")
        return y, a, w

    def _domains(
        self,
        get_ya: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
        k: int,
        w: np.ndarray,
        d_codes: np.ndarray | None,
        *,
        rows: np.ndarray | None = None,
        n_domains: int = 1,
    ) -> list[RatioEstimates]:
        """Two chunked passes over the rows, sorted by (domain, PSU).

        Pass 1 sums w·y, w·a (and unweighted counts) per PSU-in-domain and per (domain, stratum),
        which gives each domain's ratios R and stratum means z̄_h of the linearised variable.
        Pass 2 forms the PSU totals z_j = (Y_j − R X_j)/X, centres them within strata and
        accumulates Σ scale_h (z_j − z̄_h)(z_j − z̄_h)ᵀ; PSUs of the stratum with no domain
        members add (n_h − m_h) z̄_h z̄_hᵀ.  Memory stays at a few chunks whatever n is; PSU
        totals are cached between passes only when they fit in a small budget.
        """
        P = self.n_psu
        D = n_domains
        chunk_rows = self.chunk_rows
        psu = self.psu_code if rows is None else self.psu_code[rows]
        if d_codes is None:
            d_codes = np.zeros(psu.shape[0], dtype=np.int64)
        key = d_codes.astype(np.int64) * P + psu
        order = np.argsort(key, kind="stable")
        skey = key[order]
        row_idx = order if rows is None else rows[order]
        n_sel = skey.shape[0]
        if n_sel:
            starts = np.flatnonzero(np.concatenate(([True], skey[1:] != skey[:-1])))
        else:
            starts = np.zeros(0, dtype=np.int64)
        ends = np.append(starts[1:], n_sel)
        cell_key = skey[starts]
        cell_dom = cell_key // P
        cell_st = self.psu_stratum[cell_key % P]
        C = starts.shape[0]
        H = self.n_strata
        # (domain, stratum) groups: cells are sorted by domain then PSU, and PSU codes are sorted by
        # stratum, so group keys are non-decreasing along the cells.
        gkey = cell_dom * H + cell_st
        if C:
            gstart = np.flatnonzero(np.concatenate(([True], gkey[1:] != gkey[:-1])))
        else:
            gstart = np.zeros(0, dtype=np.int64)
        G = gstart.shape[0]
        marker = np.zeros(C, dtype=np.int64)
        marker[gstart] = 1
        cell_group = np.cumsum(marker) - 1
        g_dom = cell_dom[gstart]
        g_st = cell_st[gstart]
        m_g = np.diff(np.append(gstart, C)).astype(np.float64)  # PSUs of the group present in domain

        # Chunks: contiguous cells of one domain, about chunk_rows rows each.
        dom_cell_bounds = np.searchsorted(cell_dom, np.arange(D + 1))
        chunks: list[tuple[int, int, int]] = []  # (domain, first cell, end cell)
        for d in range(D):
            c, c1 = int(dom_cell_bounds[d]), int(dom_cell_bounds[d + 1])
            while c < c1:
                nxt = int(np.searchsorted(starts, starts[c] + chunk_rows, side="left"))
                nxt = min(max(nxt, c + 1), c1)
                chunks.append((d, c, nxt))
                c = nxt

        cache_ok = 2 * C * k * 8 <= _CACHE_BYTES
        cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def cell_totals(c0: int, c1: int):
            """Weighted PSU-in-domain totals (column-major) and the chunk's row-level y, a."""
            r0, r1 = int(starts[c0]), int(ends[c1 - 1])
            idx = row_idx[r0:r1]
            yc, ac = get_ya(idx)
            wc = w[idx][:, None]
            ncell = c1 - c0
            if ncell == r1 - r0:  # every PSU-in-domain is a single row (e.g. single-stage designs)
                return yc * wc, ac * wc, yc, ac
            # Column-wise bincount on integer cell ids: O(rows) per column, much faster than
            # reduceat along axis 0 when cells are small.
            ids = np.repeat(np.arange(ncell), ends[c0:c1] - starts[c0:c1])
            Yc = np.empty((ncell, k), order="F")
            Xc = np.empty((ncell, k), order="F")
            for j in range(k):
                Yc[:, j] = np.bincount(ids, weights=yc[:, j] * wc[:, 0], minlength=ncell)
                Xc[:, j] = np.bincount(ids, weights=ac[:, j] * wc[:, 0], minlength=ncell)
            return Yc, Xc, yc, ac

        def group_sum(values: np.ndarray, c0: int, c1: int, row_level: bool = False):
            """Sums over the (domain, stratum) groups met in cells c0..c1 (contiguous runs)."""
            grp = cell_group[c0:c1]
            local = np.flatnonzero(np.concatenate(([True], grp[1:] != grp[:-1])))
            at = starts[c0:c1][local] - starts[c0] if row_level else local
            if values.dtype == bool:  # counting: integer sums of bytes are ~2x faster than floats
                return grp[local], np.add.reduceat(values.view(np.uint8), at, axis=0, dtype=np.int64)
            return grp[local], np.add.reduceat(values, at, axis=0)

        # Pass 1: group totals.
        YG = np.zeros((G, k))
        XG = np.zeros((G, k))
        UY = np.zeros((G, k))
        UA = np.zeros((G, k))
        NA = np.zeros((G, k))
        for ci, (_, c0, c1) in enumerate(chunks):
            Yc, Xc, yc, ac = cell_totals(c0, c1)
            if cache_ok:
                cache[ci] = (Yc, Xc)
            for target, vals in ((YG, Yc), (XG, Xc)):
                g, tot = group_sum(vals, c0, c1)
                target[g] += tot
            g, tot = group_sum(yc, c0, c1, row_level=True)
            UY[g] += tot
            g, tot = group_sum(ac, c0, c1, row_level=True)
            UA[g] += tot
            if ac.dtype == bool:
                NA[g] += tot
            else:
                g, tot = group_sum(ac != 0, c0, c1, row_level=True)
                NA[g] += tot
            del Yc, Xc, yc, ac

        def by_domain(values: np.ndarray) -> np.ndarray:
            out = np.zeros((D, k))
            np.add.at(out, g_dom, values)
            return out

        Y = by_domain(YG)
        X = by_domain(XG)
        ok = X > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            R = np.where(ok, Y / np.where(ok, X, 1.0), np.nan)
        R0 = np.where(ok, R, 0.0)
        Xs = np.where(ok, X, 1.0)
        # Stratum means of z over all n_h PSUs of the stratum (absent PSUs are zeros).
        zbar = (YG - R0[g_dom] * XG) / Xs[g_dom] / self.n_h[g_st][:, None]
        zbar *= ok[g_dom]
        zbar *= self._centre[g_st][:, None]
        sq_scale = np.sqrt(self.scale)

        # Pass 2: centred PSU totals.
        V = np.zeros((D, k, k))
        for ci, (d, c0, c1) in enumerate(chunks):
            Yc, Xc = cache.pop(ci) if cache_ok else cell_totals(c0, c1)[:2]
            Z = Xc * -R0[d]  # z_j = (Y_j - R X_j) / X, in place
            Z += Yc
            Z /= Xs[d]
            del Yc, Xc
            Z -= zbar[cell_group[c0:c1]]
            Z *= sq_scale[cell_st[c0:c1]][:, None]
            Z[:, ~ok[d]] = 0.0
            V[d] += Z.T @ Z
        absent = (self.n_h[g_st] - m_g) * self.scale[g_st]
        Zb = zbar * np.sqrt(absent)[:, None]
        # Groups are sorted by domain: each domain's groups are one contiguous slice.
        g_bounds = np.searchsorted(g_dom, np.arange(D + 1))
        for d in np.flatnonzero(np.diff(g_bounds)):
            zb = Zb[g_bounds[d]:g_bounds[d + 1]]
            V[d] += zb.T @ zb

        Uy = by_domain(UY)
        Ua = by_domain(UA)
        Nn = by_domain(NA)
        out = []
        for d in range(D):
            cov = V[d].copy()
            cov[~ok[d], :] = np.nan
            cov[:, ~ok[d]] = np.nan
            out.append(RatioEstimates(
                ratio=R[d], cov=cov, numerator=Y[d], denominator=X[d], n=Nn[d].astype(np.int64),
                unweighted_numerator=Uy[d], unweighted_denominator=Ua[d]))
        return out


def _plain(label: Any) -> Any:
    """numpy scalar -> Python scalar (JSON keys, dict lookups)."""
    return label.item() if isinstance(label, np.generic) else label


def ratio_estimates(
    y: Any,
    a: Any,
    w: Any,
    strata: Any,
    psu: Any = None,
    fpc: Any = None,
    domain_mask: Any = None,
    *,
    lonely_psu: str = "adjust",
) -> RatioEstimates:
    """Ratios R_c = Σ w y_c / Σ w a_c with their covariance, in one domain of a stratified design.

    ``y``, ``a``: (n, k) (or (n,)); ``w``: (n,); ``strata``, ``psu``: labels per row (``psu=None``:
    each row its own PSU); ``fpc``: N_h per row or ``None``; ``domain_mask``: bool per row.
    Equivalent to R's ``svyratio(~y, ~a, subset(design, mask), covmat=TRUE)``.  To estimate many
    domains or quantities on one design, build a :class:`SampleDesign` once instead.
    """
    return SampleDesign(strata, psu, fpc, lonely_psu=lonely_psu).ratio_estimates(y, a, w, domain_mask)


# --------------------------------------------------------------------------------------------------
# Composite indices
# --------------------------------------------------------------------------------------------------


def linear_combination(ratio: Any, cov: Any, coef: Any) -> tuple[float, float]:
    """Estimate c·R and its SE sqrt(cᵀ V c).

    The SE of a mean of correlated item ratios needs the covariances: items answered by the same
    people are positively correlated, so averaging their SEs (or assuming independence) is wrong.
    Columns with coefficient 0 are ignored even if NaN.
    """
    ratio = np.asarray(ratio, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    coef = np.asarray(coef, dtype=np.float64)
    used = coef != 0
    c = coef[used]
    value = float(c @ ratio[used])
    var = float(c @ cov[np.ix_(used, used)] @ c)
    return value, math.sqrt(max(var, 0.0))


def _composite_coefficients(design: Design, items: Sequence[str], available: np.ndarray):
    """Coefficient vectors over item ratios for each element, part and the overall index.

    Missing items (no valid answer in the domain) drop out and the remaining items of the element
    share its weight; an element with no item left is ``None`` and drops out of its part and of
    the overall index in the same way.  Documented in docs/method/estimation.md.
    """
    pos = {c: j for j, c in enumerate(items)}
    k = len(items)
    elements: dict[str, np.ndarray | None] = {}
    for e, e_items in design.elements.items():
        have = [pos[c] for c in e_items if available[pos[c]]]
        if have:
            v = np.zeros(k)
            v[have] = 1.0 / len(have)
            elements[e] = v
        else:
            elements[e] = None

    def mean_of(vectors: Iterable[np.ndarray | None]) -> np.ndarray | None:
        have = [v for v in vectors if v is not None]
        return np.mean(have, axis=0) if have else None

    parts: dict[str, np.ndarray | None] | None = None
    if design.parts:
        parts = {p: mean_of(elements[e] for e in p_el) for p, p_el in design.parts.items()}
        overall = mean_of(parts.values())
    else:
        overall = mean_of(elements.values())
    return elements, parts, overall


def composite_indices(ratio: Any, cov: Any | None, items: Sequence[str], design: Design) -> dict:
    """Items, elements, (parts) and overall index in index points (×100).

    With ``cov`` each entry is ``{"index", "se"}`` (design-weighted); with ``cov=None`` each entry
    is the bare index (the unweighted official figures carry no SE).  Undefined entries are
    ``None``.
    """
    ratio = np.asarray(ratio, dtype=np.float64)
    available = np.isfinite(ratio)
    safe_ratio = np.where(available, ratio, 0.0)
    safe_cov = None if cov is None else np.nan_to_num(np.asarray(cov, dtype=np.float64), nan=0.0)
    pos = {c: j for j, c in enumerate(items)}

    def cell(coef: np.ndarray | None):
        if coef is None:
            return {"index": None, "se": None} if cov is not None else None
        if cov is None:
            return 100.0 * float(coef[coef != 0] @ safe_ratio[coef != 0])
        value, se = linear_combination(safe_ratio, safe_cov, coef)
        return {"index": 100.0 * value, "se": 100.0 * se}

    out: dict[str, Any] = {"items": {}}
    for c in design.items:
        j = pos[c]
        coef = None
        if available[j]:
            coef = np.zeros(len(items))
            coef[j] = 1.0
        out["items"][c] = cell(coef)
    elements, parts, overall = _composite_coefficients(design, items, available)
    out["elements"] = {e: cell(v) for e, v in elements.items()}
    if parts is not None:
        out["parts"] = {p: cell(v) for p, v in parts.items()}
    out["overall"] = cell(overall)
    return out


# --------------------------------------------------------------------------------------------------
# The SIPAS table
# --------------------------------------------------------------------------------------------------


def _sample_design(responses: Responses, design: Design, lonely_psu: str | None) -> SampleDesign:
    psu = responses.psu
    if psu is not None:
        if design.clustered is False:
            s_codes, _ = _factorize(responses.stratum)
            p_codes, _ = _factorize(psu)
            key = s_codes * (int(p_codes.max(initial=0)) + 1) + p_codes
            uniq, first, counts = np.unique(key, return_index=True, return_counts=True)
            if (counts > 1).any():
                r = int(np.sort(first[counts > 1])[0])
                raise EstimationInputError(
                    f"design says 'clustered': false but PSU '{_plain(psu[r])}' (data row {r + 1}) holds several "
                    "respondents; set 'clustered': true or give each respondent their own psu")
    elif design.clustered:
        raise EstimationInputError("design says 'clustered': true but the responses have no 'psu' column")
    return SampleDesign(responses.stratum, psu, responses.fpc, lonely_psu=lonely_psu or design.lonely_psu)


def estimate(responses: Responses, design: Design, *, lonely_psu: str | None = None) -> dict:
    """The SIPAS table for one wave, in the JSON shape of ``tests/fixtures/estimation-check/expected.json``.

    * ``national`` and ``provinces``: design-weighted indices with SE (provinces are domains of
      the full national design);
    * ``unweighted``: the official figures (w_i = 1) pooled nationally and per province, and
      ``national_mean_of_provinces`` (mean of provincial overall indices, §4 "National figure").
    """
    missing = [c for c in design.items if c not in responses.items]
    if missing:
        raise EstimationInputError(f"responses have no column for item(s): {', '.join(missing)}")
    col = [responses.items.index(c) for c in design.items]
    items = design.items
    sampling = _sample_design(responses, design, lonely_psu)
    answers = responses.answers
    # "Satisfied" is usually the top of the scale (4, 5): one comparison; otherwise a lookup table
    # indexed by answer code + 1 (codes -1..5).  Both beat np.isin on large blocks.
    low = min(design.satisfied)
    top_of_scale = design.satisfied == tuple(range(low, 6))
    is_satisfied = np.zeros(7, dtype=bool)
    is_satisfied[np.asarray(design.satisfied) + 1] = True
    all_cols = col == list(range(len(responses.items)))

    def get_ya(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        block = answers[rows] if all_cols else answers[rows][:, col]
        y = block >= low if top_of_scale else is_satisfied[block + 1]
        return y, block >= 1

    k = len(items)
    w = responses.weight
    national = sampling._domains(get_ya, k, w, None)[0]
    p_codes, p_labels = _factorize(responses.province)
    provinces = sampling._domains(get_ya, k, w, p_codes, n_domains=len(p_labels))
    labels = [str(_plain(p)) for p in p_labels]

    out: dict[str, Any] = {
        "national": composite_indices(national.ratio, national.cov, items, design),
        "provinces": {lab: composite_indices(r.ratio, r.cov, items, design) for lab, r in zip(labels, provinces)},
    }
    unweighted_prov = {lab: composite_indices(r.unweighted_ratio, None, items, design)
                       for lab, r in zip(labels, provinces)}
    overall = [v["overall"] for v in unweighted_prov.values() if v["overall"] is not None]
    out["unweighted"] = {
        "national_pooled": composite_indices(national.unweighted_ratio, None, items, design),
        "provinces": unweighted_prov,
        "national_mean_of_provinces": float(np.mean(overall)) if overall else None,
    }
    return out


# --------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------

_ANSWER_CODES = {"": BLANK, "na": NOT_APPLICABLE, "1": 1, "2": 2, "3": 3, "4": 4, "5": 5}


def read_design_json(path: str | os.PathLike[str]) -> Design:
    """Read a design card (``design.json``); a UTF-8 BOM is tolerated."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise EstimationInputError(f"{path}: cannot read design: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise EstimationInputError(f"{path}: design is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise EstimationInputError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    return Design.from_dict(data, source=str(path))


def _open_text(path_or_file: Any) -> tuple[IO[str], str, str]:
    """A text stream, what to do with it afterwards ("close", "detach" or "keep"), and its name."""
    if isinstance(path_or_file, (str, os.PathLike)):
        try:
            return open(path_or_file, encoding="utf-8-sig", newline=""), "close", str(path_or_file)
        except OSError as exc:
            raise EstimationInputError(f"{path_or_file}: cannot read responses: {exc.strerror or exc}") from exc
    name = str(getattr(path_or_file, "name", "responses"))
    if isinstance(path_or_file, (io.RawIOBase, io.BufferedIOBase)) or "b" in str(getattr(path_or_file, "mode", "")):
        # detach afterwards so the caller's binary stream is not closed with the wrapper
        return io.TextIOWrapper(path_or_file, encoding="utf-8-sig", newline=""), "detach", name
    return path_or_file, "keep", name


def read_responses_csv(path_or_file: Any, items: Sequence[str] | None = None) -> Responses:
    """Read accepted forms from CSV: ``stratum``, ``weight``, ``province``, the item columns, and
    optionally ``psu`` (clusters; absent = one PSU per respondent) and ``fpc`` (N_h; absent or all
    blank = no correction).

    Tolerates a UTF-8 BOM, surrounding spaces, blank answers and ``na`` in any case.  ``items``
    names the answer columns (the CLI passes the design's items); without it every column not in
    :data:`METADATA_COLUMNS` is an item.  Anything else is an :class:`EstimationInputError` that
    names the line and column, so a data manager can fix the file.
    """
    fh, after, name = _open_text(path_or_file)
    try:
        try:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise EstimationInputError(f"{name}: the file is empty (no header row)")
            header = [h.strip() for h in header]
            if header and header[0].startswith("\ufeff"):
                header[0] = header[0][1:]
            dup = sorted({h for h in header if header.count(h) > 1})
            if dup:
                raise EstimationInputError(f"{name}: column(s) appear twice in the header: {', '.join(dup)}")
            if items is None:
                items = [h for h in header if h and h not in METADATA_COLUMNS]
            items = list(items)
            required = ["stratum", "weight", "province", *items]
            missing = [c for c in required if c not in header]
            if missing:
                raise EstimationInputError(f"{name}: missing column(s): {', '.join(missing)}")
            if not items:
                raise EstimationInputError(f"{name}: no item columns")
            ncol = len(header)
            rows: list[list[str]] = []
            lines: list[int] = []
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if len(row) != ncol:
                    raise EstimationInputError(
                        f"{name}, line {reader.line_num}: {len(row)} fields where the header has {ncol}")
                rows.append(row)
                lines.append(reader.line_num)
        except UnicodeDecodeError as exc:
            raise EstimationInputError(f"{name}: not UTF-8 text ({exc.reason})") from exc
        except csv.Error as exc:
            raise EstimationInputError(f"{name}: malformed CSV: {exc}") from exc
    finally:
        if after == "close":
            fh.close()
        elif after == "detach":
            fh.detach()
    if not rows:
        raise EstimationInputError(f"{name}: no response rows")
    columns = {h: j for j, h in enumerate(header)}

    def column(col: str) -> list[str]:
        j = columns[col]
        return [r[j].strip() for r in rows]

    def where(i: int, col: str) -> str:
        return f"{name}, line {lines[i]}, column '{col}'"

    answers = np.empty((len(rows), len(items)), dtype=np.int8)
    for j, c in enumerate(items):
        values = column(c)
        codes = [_ANSWER_CODES.get(v.lower()) for v in values]
        if None in codes:
            i = codes.index(None)
            raise EstimationInputError(f"{where(i, c)}: answer '{values[i]}' is not 1-5, blank or na")
        answers[:, j] = codes

    def numbers(col: str, allow_blank: bool) -> np.ndarray:
        values = column(col)
        out = np.empty(len(values))
        for i, v in enumerate(values):
            if v == "" and allow_blank:
                out[i] = np.nan
                continue
            try:
                out[i] = float(v)
            except ValueError:
                raise EstimationInputError(f"{where(i, col)}: '{v}' is not a number") from None
            if not (math.isfinite(out[i]) and out[i] > 0):
                raise EstimationInputError(f"{where(i, col)}: '{v}' is not a positive number")
        return out

    def labels(col: str) -> np.ndarray:
        values = column(col)
        for i, v in enumerate(values):
            if v == "":
                raise EstimationInputError(f"{where(i, col)}: empty")
        return np.array(values, dtype=object)

    weight = numbers("weight", allow_blank=False)
    fpc = None
    if "fpc" in columns:
        fpc = numbers("fpc", allow_blank=True)
        blank = np.isnan(fpc)
        if blank.all():
            fpc = None
        elif blank.any():
            i = int(np.flatnonzero(blank)[0])
            raise EstimationInputError(f"{where(i, 'fpc')}: empty while other rows give an fpc")
    return Responses(
        items=tuple(items),
        answers=answers,
        weight=weight,
        stratum=labels("stratum"),
        province=labels("province"),
        psu=labels("psu") if "psu" in columns else None,
        fpc=fpc,
    )
