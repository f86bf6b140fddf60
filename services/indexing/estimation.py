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
from concurrent.futures import ThreadPoolExecutor
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

_DEFAULT_CHUNK_ROWS = 1 << 18  # rows per chunk: bounds memory (~ chunk × items bytes per array in flight);
# a chunk of a single-stage file is sorted on its own and its gathers stay within its rows
_PIECE_ROWS = 1 << 13  # rows per piece of a chunk whose float [y; a]·w block is built at once: it stays in cache
_ONE_PASS_ROWS = 256  # rows per domain (on average) from which one pass with (2k)² Gram matrices pays
_CACHE_BYTES = 256 << 20  # two-pass mode keeps a chunk's y, a for pass 2 while they fit in this budget


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


@dataclass(frozen=True, eq=False)
class DomainEstimates:
    """The :class:`RatioEstimates` of every domain of one kind, stacked: ``ratio`` (D, k),
    ``cov`` (D, k, k) and so on, so callers can work on all domains with array operations;
    ``est[d]`` is domain d's :class:`RatioEstimates`."""

    ratio: np.ndarray
    cov: np.ndarray
    numerator: np.ndarray
    denominator: np.ndarray
    n: np.ndarray
    unweighted_numerator: np.ndarray
    unweighted_denominator: np.ndarray

    def __len__(self) -> int:
        return int(self.ratio.shape[0])

    def __getitem__(self, d: int) -> RatioEstimates:
        return RatioEstimates(
            ratio=self.ratio[d], cov=self.cov[d], numerator=self.numerator[d], denominator=self.denominator[d],
            n=self.n[d], unweighted_numerator=self.unweighted_numerator[d],
            unweighted_denominator=self.unweighted_denominator[d])

    def __iter__(self):
        return (self[d] for d in range(len(self)))


def _factorize(labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes 0..G-1 (in sorted label order) and the labels, for np.bincount/reduceat.

    Small non-negative integer codes and text labels avoid a full sort of the rows (a bincount,
    a dict): the sort was a large share of a national run."""
    arr = np.asarray(labels)
    if arr.ndim == 1 and np.issubdtype(arr.dtype, np.integer) and arr.shape[0] \
            and 0 <= int(arr.min()) and int(arr.max()) < 4 * arr.shape[0] + 1024:
        present = np.bincount(arr) > 0
        remap = np.cumsum(present) - 1
        return remap[arr].astype(np.int64), np.flatnonzero(present).astype(arr.dtype)
    if arr.dtype == object and arr.ndim == 1:
        try:
            uniq = sorted(set(arr.tolist()))
        except TypeError:
            uniq = None
        if uniq is not None:
            where = {u: i for i, u in enumerate(uniq)}
            codes = np.fromiter(map(where.__getitem__, arr.tolist()), dtype=np.int64, count=arr.shape[0])
            out = np.empty(len(uniq), dtype=object)
            out[:] = uniq
            return codes, out
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
    never split), so 10M respondents × 22 items need a few hundred MB, not tens of GB; ``workers``
    threads process chunks side by side.
    """

    def __init__(self, strata: Any, psu: Any = None, fpc: Any = None, *, lonely_psu: str = "adjust",
                 chunk_rows: int = _DEFAULT_CHUNK_ROWS, workers: int | None = None,
                 piece_rows: int = _PIECE_ROWS):
        if chunk_rows < 1 or piece_rows < 1:
            raise ValueError("chunk_rows and piece_rows must be positive")
        self.chunk_rows = int(chunk_rows)
        self.piece_rows = int(piece_rows)
        #: threads working on chunks at once (a large file has many chunks; results are summed in
        #: chunk order, so the numbers do not depend on it)
        self.workers = max(1, int(workers)) if workers is not None else min(4, os.cpu_count() or 1)
        if lonely_psu not in LONELY_PSU_RULES:
            raise ValueError(f"lonely_psu must be one of {LONELY_PSU_RULES}, got {lonely_psu!r}")
        s_codes, s_labels = _factorize(strata)
        n = s_codes.shape[0]
        H = len(s_labels)
        if psu is None:
            # Each row its own PSU: no PSU codes needed, the estimator groups rows by stratum.
            psu_code = None
            psu_stratum = None
            n_h_int = np.bincount(s_codes, minlength=H)
        else:
            p_codes, _ = _factorize(psu)
            if p_codes.shape[0] != n:
                raise EstimationInputError("psu must have one value per response row")
            key = s_codes * (int(p_codes.max(initial=0)) + 1) + p_codes  # PSUs nested in strata
            uniq, psu_code = np.unique(key, return_inverse=True)
            psu_code = psu_code.reshape(-1).astype(np.int64)
            psu_stratum = np.empty(len(uniq), dtype=np.int64)
            psu_stratum[psu_code] = s_codes
            n_h_int = np.bincount(psu_stratum, minlength=H)
        n_h = n_h_int.astype(np.float64)

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
        #: every respondent is their own PSU (no ``psu`` given)
        self.single_stage = psu is None
        self.n_psu = n if psu is None else psu_stratum.shape[0]
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
        k = y.shape[1]
        y, a = np.ascontiguousarray(y.T), np.ascontiguousarray(a.T)  # the estimator reads columns
        if domain_mask is None:
            return self._domains(lambda rows: (np.take(y, rows, axis=1), np.take(a, rows, axis=1)), k, w, None)[0]
        mask = np.asarray(domain_mask, dtype=bool)
        if mask.shape != (self.n_rows,):
            raise ValueError("domain_mask must have one value per row")
        rows = np.flatnonzero(mask)
        return self._domains(lambda r: (np.take(y, r, axis=1), np.take(a, r, axis=1)), k, w, np.zeros(rows.shape[0], np.int64),
                             rows=rows, n_domains=1)[0]

    def domain_ratios(self, y: Any, a: Any, w: Any, domains: Any) -> dict[Hashable, RatioEstimates]:
        """Ratios for every domain label in ``domains`` (one label per row), in one pass per stage.

        Domains may cut across strata and PSUs (e.g. gender); each keeps the full design.
        """
        y, a, w = self._check_arrays(y, a, w)
        codes, labels = _factorize(domains)
        if codes.shape[0] != self.n_rows:
            raise ValueError("domains must have one label per row")
        k = y.shape[1]
        y, a = np.ascontiguousarray(y.T), np.ascontiguousarray(a.T)  # the estimator reads columns
        res = self._domains(lambda rows: (np.take(y, rows, axis=1), np.take(a, rows, axis=1)), k, w, codes, n_domains=len(labels))
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
        w: np.ndarray | None,
        d_codes: np.ndarray | None,
        *,
        rows: np.ndarray | None = None,
        n_domains: int = 1,
    ) -> list[RatioEstimates]:
        """Per-domain :class:`RatioEstimates`; ``get_ya(rows)`` returns (k, len(rows)) arrays."""
        return list(self._estimate(get_ya, k, [w], d_codes, rows=rows, n_domains=n_domains)[0])

    def _estimate(
        self,
        get_ya: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
        k: int,
        weights: Sequence[np.ndarray | None],
        d_codes: np.ndarray | None,
        *,
        rows: np.ndarray | None = None,
        n_domains: int = 1,
        srs: bool = False,
    ) -> list[DomainEstimates]:
        """Every domain of one kind, for one or more weight vectors, in two chunked passes.

        ``get_ya(rows)`` gives y and a for those rows *column-major*, shape (k, len(rows)): sums
        over runs of rows are then contiguous (``np.add.reduceat`` along the last axis is ~10×
        faster than down the columns of a row-major block).  A weight vector ``None`` means unit
        weights (the official unweighted figure), whose sums are the counts already taken.

        Why this shape: a national wave has thousands of small domains (communes) and a 10M-row
        file a few huge ones; looping per domain made the first slow, materialising everything
        made the second huge.  Rows are sorted once by (domain, PSU) -- by (domain, stratum) when
        every respondent is their own PSU, a radix sort when the keys are small -- and processed
        in chunks of about ``chunk_rows`` rows that may span domains; the weight vectors share
        the sort, the ``get_ya`` calls and the counts.

        Pass 1 sums w·y, w·a per (domain, stratum) group, which gives each domain's ratios R and
        the group means z̄ of the linearised variable over all n_h PSUs of the stratum (PSUs
        without domain members count as zeros).  Pass 2 forms the PSU totals
        z_j = (Y_j − R X_j)/X and accumulates Σ_h scale_h (Σ_j z_j z_jᵀ − n_h z̄ z̄ᵀ), the centred
        sum of squares of every PSU of the stratum, per domain: one matrix product for a long
        run of one domain, summed outer products for many short runs.  Strata whose lone PSU is
        centred at the grand mean ("adjust") have z̄ = 0 here.

        ``srs=True`` (single-stage designs with a unit-weight vector) also returns, last, the
        variance a simple random sample of the same rows would give (one stratum, no fpc): for a
        domain ratio that is n/(n−1) Σ_i z_i z_iᵀ with the same z as the unit weighting (their
        mean over the sample is exactly zero), so it costs one more matrix product, no pass.
        """
        D = int(n_domains)
        H = self.n_strata
        single = self.single_stage
        n_w = len(weights)
        if srs and not (single and any(wv is None for wv in weights)):
            raise ValueError("srs needs a single-stage design and a unit-weight vector")
        st_rows = self.stratum_code if rows is None else self.stratum_code[rows]
        n_sel = st_rows.shape[0]
        if d_codes is None:
            d_codes = np.zeros(n_sel, dtype=np.int64)
        d_codes = np.asarray(d_codes, dtype=np.int64)
        step = self.chunk_rows
        chunks: list[tuple[int, int, int, int]] = []
        if single:
            # Every row is a PSU: only (domain, stratum) groups matter, not the order within them.
            # So rows are not sorted as a whole: each chunk of consecutive rows is sorted by group
            # on its own (a radix sort of a few thousand keys), and its gathers stay inside the
            # chunk's slice of the columns, in cache.  A global order made every gather from a
            # 10M-row column a cache miss: the largest cost of a national file.  Chunks add their
            # sums into the groups they meet, in chunk order.
            if D * H <= min(1 << 16, n_sel // 8):
                # Few groups for many rows: a group's number is its key, taken chunk by chunk (no
                # pass over all rows to number them first); groups without rows add zeros.
                row_group = None
                g_key = np.arange(D * H)
            else:
                row_group, g_key = _factorize(d_codes * H + st_rows)
            G = g_key.shape[0]
            g_dom = g_key // H
            g_st = g_key % H
            chunks = [(r0, min(r0 + step, n_sel), r0, min(r0 + step, n_sel)) for r0 in range(0, n_sel, step)]
        else:
            P = self.n_psu
            psu = self.psu_code if rows is None else self.psu_code[rows]
            key = d_codes * P + psu
            order = _stable_order(key, D * P)
            skey = key[order]
            row_idx = order if rows is None else rows[order]
            del key
            bound = np.ones(n_sel, dtype=bool)
            if n_sel:
                np.not_equal(skey[1:], skey[:-1], out=bound[1:])
            cell_starts = np.flatnonzero(bound)
            C = cell_starts.shape[0]
            cell_key = skey[cell_starts]
            cell_dom = cell_key // P
            cell_st = self.psu_stratum[cell_key % P]
            gkey = cell_dom * H + cell_st
            gb = np.ones(C, dtype=bool)
            if C:
                np.not_equal(gkey[1:], gkey[:-1], out=gb[1:])
            gstart = np.flatnonzero(gb)  # in cells
            g_dom = cell_dom[gstart]
            g_st = cell_st[gstart]
            del gkey, gb
            G = gstart.shape[0]
            del skey, bound
            g_row = cell_starts[gstart]  # group starts in rows

            # Chunks: rows [r0, r1) and cells [c0, c1) of the sorted order, at cell boundaries,
            # about chunk_rows rows each.
            cell_ends = np.append(cell_starts[1:], n_sel)
            c0 = 0
            while c0 < C:
                c1 = int(np.searchsorted(cell_starts, cell_starts[c0] + step, side="left"))
                c1 = min(max(c1, c0 + 1), C)
                chunks.append((int(cell_starts[c0]), int(cell_ends[c1 - 1]), c0, c1))
                c0 = c1

        def columns(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            y, a = get_ya(idx)
            if y.shape != (k, idx.shape[0]) or a.shape != (k, idx.shape[0]):
                raise ValueError(f"get_ya must return (k, rows) arrays; got {y.shape}, {a.shape}")
            return y, a

        def groups_in(first: np.ndarray, lo_: int, hi_: int) -> tuple[np.ndarray, np.ndarray]:
            """Groups met in [lo_, hi_) of rows (``first`` = g_row) or cells (``gstart``), and
            where each starts, as offsets from lo_."""
            lo = int(np.searchsorted(first, lo_, side="right")) - 1
            hi = int(np.searchsorted(first, hi_, side="left"))
            at = first[lo:hi] - lo_
            at[0] = 0
            return np.arange(lo, hi), at

        q = np.sqrt(self.scale)  # per stratum
        unit = next((m for m, wv in enumerate(weights) if wv is None), None)
        # One pass (Gram matrices of [Y; X]: 4× the products of a Gram of z) when a second pass
        # would read the rows again -- they do not fit the cache budget -- and the domains are
        # large; two passes (y, a kept between them while they fit) otherwise, e.g. a national
        # wave, or thousands of communes that would each carry a (2k)² matrix.
        per_row = 0
        if chunks:
            y0, a0 = get_ya(np.arange(1) if rows is None else rows[:1])
            per_row = k * (np.asarray(y0).itemsize + np.asarray(a0).itemsize)
        one_pass = (per_row * n_sel > _CACHE_BYTES and n_sel >= _ONE_PASS_ROWS * max(D, 1)
                    and D * (2 * k) ** 2 * 8 * (n_w + srs) <= 1 << 27)
        cached: set[int] = set()
        cache: dict[int, tuple] = {}  # chunk -> (y, a, layout)
        if not one_pass and chunks:
            budget = _CACHE_BYTES
            for ci, (r0, r1, _, _) in enumerate(chunks):
                budget -= per_row * (r1 - r0)
                if budget < 0:
                    break
                cached.add(ci)

        def layout(ci: int):
            """A chunk's rows in group order (``idx``), the groups it meets (``g``) and where each
            starts (``at``), each row's (single-stage) or cell's domain, and the domain runs."""
            r0, r1, c0, c1 = chunks[ci]
            if single:
                local = row_group[r0:r1] if row_group is not None else d_codes[r0:r1] * H + st_rows[r0:r1]
                order = _stable_order(local, G)
                sg = local[order]
                at = np.flatnonzero(np.concatenate(([True], sg[1:] != sg[:-1])))
                g = sg[at]
                idx = order + r0 if rows is None else rows[r0:r1][order]
                dom = np.repeat(g_dom[g], np.diff(np.append(at, r1 - r0)))  # repeat: no gather per row
            else:
                idx = row_idx[r0:r1]
                g, at = groups_in(g_row, r0, r1)
                dom = cell_dom[c0:c1]
            runs = np.flatnonzero(np.concatenate(([True], dom[1:] != dom[:-1])))
            return idx, g, at, dom, dom[runs], np.append(runs, dom.shape[0])

        def task(ci: int):
            """One chunk: counts and weighted sums per group, Gram matrices of [Y; X] per domain."""
            r0, r1, c0, c1 = chunks[ci]
            lay = layout(ci)
            idx, g, at, dom, run_dom, run_bounds = lay
            y, a = columns(idx)
            uy = _reduce_cols(y, at)
            ua = _reduce_cols(a, at)
            na = ua if a.dtype == bool else _reduce_cols(a != 0, at)
            if not single:
                _, at_cells = groups_in(gstart, c0, c1)
                cell_at = cell_starts[c0:c1] - r0
                q_cells = q[cell_st[c0:c1]]
            per = []
            for wv in weights:
                if not one_pass:  # sums only; the Gram comes in pass 2
                    if wv is None:
                        per.append((None, None))
                        continue
                    wc = wv[idx]  # groups are runs of rows too
                    per.append((np.concatenate((np.add.reduceat(y * wc, at, axis=1),
                                                np.add.reduceat(a * wc, at, axis=1))), None))
                    continue
                # one pass, clustered (single-stage files go a piece at a time: task_pieces): the
                # PSU totals [Y_j; X_j]·√scale_h
                if wv is None:
                    P = np.concatenate((_reduce_cols(y, cell_at), _reduce_cols(a, cell_at)))
                else:
                    wc = wv[idx]
                    P = np.concatenate((np.add.reduceat(y * wc, cell_at, axis=1),
                                        np.add.reduceat(a * wc, cell_at, axis=1)))
                sums = None if wv is None else np.add.reduceat(P, at_cells, axis=1)
                P *= q_cells
                per.append((sums, _gram_runs(P, run_bounds)))
                del P
            return g, uy, ua, na, per, None, run_dom, ((y, a, lay) if ci in cached else None)

        def task_pieces(ci: int):
            """One pass over a chunk of a single-stage file: its answers are gathered at once
            (their rows lie within the chunk), then [y; a]·w·√scale_h and its Gram products are
            formed a piece (~``piece_rows`` rows, cut at group starts) at a time, in cache.  The
            group sums of [y; a]·w are P's divided by √scale_h (constant within a group) unless a
            stratum has scale 0."""
            r0, r1, _, _ = chunks[ci]
            m = r1 - r0
            idx, g, at, dom, _, _ = layout(ci)
            pieces, run_dom, merge_at = _pieces(at, m, dom, self.piece_rows)
            qg = q[g_st[g]]
            direct = bool((qg > 0).all())
            q_rows = np.repeat(qg, np.diff(np.append(at, m)))  # √scale_h per row
            f_rows = [q_rows if wv is None else wv[idx] * q_rows for wv in weights]
            y_all, a_all = columns(idx)
            uy = _reduce_cols(y_all, at)
            ua = _reduce_cols(a_all, at)
            na = ua if a_all.dtype == bool else _reduce_cols(a_all != 0, at)
            ng = g.shape[0]
            sums = [None if wv is None else np.empty((2 * k, ng)) for wv in weights]
            grams: list[list[np.ndarray]] = [[] for _ in weights]
            srs_grams = []
            for p0, p1, gi0, gi1, p_runs in pieces:
                y, a = y_all[:, p0:p1], a_all[:, p0:p1]
                p_at = at[gi0:gi1] - p0
                for mw, wv in enumerate(weights):
                    f = f_rows[mw][p0:p1]
                    P = np.empty((2 * k, p1 - p0))
                    np.multiply(_as_number(y), f, out=P[:k])  # booleans as bytes: a faster cast
                    np.multiply(_as_number(a), f, out=P[k:])
                    if sums[mw] is not None:
                        if direct:
                            sums[mw][:, gi0:gi1] = np.add.reduceat(P, p_at, axis=1) / qg[gi0:gi1]
                        else:
                            wc = wv[idx[p0:p1]]
                            sums[mw][:k, gi0:gi1] = np.add.reduceat(y * wc, p_at, axis=1)
                            sums[mw][k:, gi0:gi1] = np.add.reduceat(a * wc, p_at, axis=1)
                    grams[mw].append(_gram_runs(P, p_runs))
                if srs:
                    srs_grams.append(_gram_runs(np.concatenate((y, a)).astype(np.float64), p_runs))
            per = [(sums[mw], _merge_runs(grams[mw], merge_at)) for mw in range(n_w)]
            srs_gram = _merge_runs(srs_grams, merge_at) if srs else None
            return g, uy, ua, na, per, srs_gram, run_dom, None

        # One pass (chunks in worker threads, summed in chunk order: reproducible): counts and
        # weighted sums per (domain, stratum) group, and per domain the Gram matrix of the PSU
        # totals [Y_j; X_j]·√scale_h.  z_j = Y_j/X − (R/X)·X_j is linear in them, so the sum of
        # squares of z follows once R is known, without a second pass over the rows.
        K2 = 2 * k
        YG = [None if wv is None else np.zeros((G, k)) for wv in weights]
        XG = [None if wv is None else np.zeros((G, k)) for wv in weights]
        GM = [np.zeros((D, K2, K2)) if one_pass else None for _ in weights]
        GM_srs = np.zeros((D, K2, K2)) if srs and one_pass else None
        UY = np.zeros((G, k))
        UA = np.zeros((G, k))
        NA = np.zeros((G, k))
        for ci, (g, uy, ua, na, per, srs_gram, run_dom, ya) in enumerate(
                _in_order(self.workers, task_pieces if single and one_pass else task, len(chunks))):
            if ya is not None:
                cache[ci] = ya
            _add_rows(UY, g, uy.T)
            _add_rows(UA, g, ua.T)
            _add_rows(NA, g, na.T)
            for m, (sums, gram) in enumerate(per):
                if sums is not None:
                    _add_rows(YG[m], g, sums[:k].T)
                    _add_rows(XG[m], g, sums[k:].T)
                if gram is not None:
                    _add_rows(GM[m], run_dom, gram)
            if srs_gram is not None:
                _add_rows(GM_srs, run_dom, srs_gram)

        g_bounds = np.searchsorted(g_dom, np.arange(D + 1))
        present = np.flatnonzero(np.diff(g_bounds))
        present_bounds = np.append(g_bounds[present], G)

        def by_domain(values: np.ndarray) -> np.ndarray:
            out = np.zeros((D,) + values.shape[1:])
            if present.shape[0]:
                out[present] = np.add.reduceat(values, g_bounds[present], axis=0)
            return out

        def fold(gm: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
            """Σ z zᵀ from the Gram of [Y; X]: z = α∘Y − β∘X, so the (k, k) blocks of the Gram
            combine with coefficients α αᵀ, −α βᵀ, −β αᵀ, β βᵀ."""
            c = np.concatenate((alpha, -beta), axis=1)  # (D, 2k)
            w2 = gm * c[:, :, None] * c[:, None, :]
            return w2[:, :k, :k] + w2[:, :k, k:] + w2[:, k:, :k] + w2[:, k:, k:]

        centred = self._centre[g_st] * self.scale[g_st] * self.n_h[g_st]
        results = []
        for m in range(n_w):
            Yg = UY if YG[m] is None else YG[m]
            Xg = UA if XG[m] is None else XG[m]
            Y = by_domain(Yg)
            X = by_domain(Xg)
            ok = X > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                R = np.where(ok, Y / np.where(ok, X, 1.0), np.nan)
                alpha = np.where(ok, 1.0 / np.where(ok, X, 1.0), 0.0)  # 1/X, 0 where unusable
            beta = np.where(ok, R, 0.0) * alpha  # R/X
            V = fold(GM[m], alpha, beta) if one_pass else np.zeros((D, k, k))
            # Centring within strata: Σ_j (z_j − z̄)(z_j − z̄)ᵀ over the n_h PSUs of a stratum
            # (absent ones are zeros) is Σ_j z_j z_jᵀ − n_h z̄ z̄ᵀ, z̄ the group's mean over n_h.
            zbar = (Yg * alpha[g_dom] - Xg * beta[g_dom]) / self.n_h[g_st][:, None]
            V[present] -= _gram_runs(np.ascontiguousarray((zbar * np.sqrt(centred)[:, None]).T), present_bounds)
            results.append((Y, X, ok, R, alpha, beta, V))

        V_srs = np.zeros((D, k, k)) if srs and not one_pass else None

        def pass2(ci: int):
            """Two-pass mode: z per PSU from the domain's R, its Gram matrices per domain run."""
            r0, r1, c0, c1 = chunks[ci]
            if ci in cache:
                y, a, (idx, g, at, dom, run_dom, run_bounds) = cache.pop(ci)
            else:
                idx, g, at, dom, run_dom, run_bounds = layout(ci)
                y, a = columns(idx)
            grams, srs_gram = [], None
            for m, wv in enumerate(weights):
                alpha, beta = results[m][4], results[m][5]
                if single:
                    Z = _linearised(y, a, alpha, beta, dom, run_dom, run_bounds)
                    if srs and m == unit:
                        srs_gram = _gram_runs(Z, run_bounds)
                    q_rows = np.repeat(q[g_st[g]], np.diff(np.append(at, r1 - r0)))
                    Z *= q_rows if wv is None else wv[idx] * q_rows
                else:
                    cell_at = cell_starts[c0:c1] - r0
                    if wv is None:
                        Yc, Xc = _reduce_cols(y, cell_at), _reduce_cols(a, cell_at)
                    else:
                        wc = wv[idx]
                        Yc = np.add.reduceat(y * wc, cell_at, axis=1)
                        Xc = np.add.reduceat(a * wc, cell_at, axis=1)
                    Z = _linearised(Yc, Xc, alpha, beta, dom, run_dom, run_bounds)
                    Z *= q[cell_st[c0:c1]]
                grams.append(_gram_runs(Z, run_bounds))
            return run_dom, grams, srs_gram

        if not one_pass:
            for run_dom, grams, srs_gram in _in_order(self.workers, pass2, len(chunks)):
                for m, gram in enumerate(grams):
                    results[m][6][run_dom] += gram
                if srs_gram is not None:
                    V_srs[run_dom] += srs_gram

        out = []
        Uy = by_domain(UY)
        Ua = by_domain(UA)
        Nn = by_domain(NA).astype(np.int64)
        if srs:
            # SRS of the same rows: one stratum of n_all rows, no fpc; the domain's own z sums to
            # zero over the sample, so there is nothing to centre.
            n_all = float(self.n_rows)
            Y, X, ok, R, alpha, beta, _ = results[unit]
            V_srs = fold(GM_srs, alpha, beta) if one_pass else V_srs
            V_srs *= n_all / (n_all - 1.0) if n_all > 1 else 0.0
            results.append((Y, X, ok, R, alpha, beta, V_srs))
        for Y, X, ok, R, _, _, V in results:
            V[~(ok[:, :, None] & ok[:, None, :])] = np.nan
            out.append(DomainEstimates(ratio=R, cov=V, numerator=Y, denominator=X, n=Nn,
                                       unweighted_numerator=Uy, unweighted_denominator=Ua))
        return out


def _pieces(at: np.ndarray, m: int, dom: np.ndarray, piece_rows: int):
    """A chunk's m rows (in group order; groups start at ``at``, ``dom`` per row) cut at group
    starts into pieces of about ``piece_rows`` rows: (rows p0:p1, groups gi0:gi1, the piece's
    domain-run offsets) each, with the chunk's domain runs and where each begins among the
    pieces' runs (a domain can straddle two pieces; :func:`_merge_runs` adds its parts)."""
    cut = np.searchsorted(at, np.arange(piece_rows, m, piece_rows))
    gstarts = np.unique(np.concatenate(([0], cut[cut < at.shape[0]])))
    pieces, run_doms = [], []
    for i, gi0 in enumerate(gstarts.tolist()):
        gi1 = int(gstarts[i + 1]) if i + 1 < gstarts.shape[0] else at.shape[0]
        p0 = int(at[gi0])
        p1 = int(at[gi1]) if gi1 < at.shape[0] else m
        d = dom[p0:p1]
        runs = np.flatnonzero(np.concatenate(([True], d[1:] != d[:-1])))
        pieces.append((p0, p1, gi0, gi1, np.append(runs, p1 - p0)))
        run_doms.append(d[runs])
    run_dom = np.concatenate(run_doms)
    merge_at = np.flatnonzero(np.concatenate(([True], run_dom[1:] != run_dom[:-1])))
    return pieces, run_dom[merge_at], merge_at


def _merge_runs(grams: list[np.ndarray], merge_at: np.ndarray) -> np.ndarray:
    """The pieces' per-run Gram matrices, one per domain run of the chunk (parts of a run that
    straddles pieces summed, in order)."""
    out = np.concatenate(grams)
    return out if merge_at.shape[0] == out.shape[0] else np.add.reduceat(out, merge_at, axis=0)


def _add_rows(target: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """target[rows] += values for sorted, distinct ``rows``; a plain add when they are all the
    rows (a chunk of a large file meets every domain): the indexed add copies twice."""
    if rows.shape[0] == target.shape[0]:
        target += values
    else:
        target[rows] += values


def _stable_order(key: np.ndarray, bound: int) -> np.ndarray:
    """Stable argsort of non-negative integer keys below ``bound``: numpy radix-sorts 8- and
    16-bit keys in linear time, which is most of the sorting a large national file needs."""
    if bound <= 1 << 8:
        return key.astype(np.uint8).argsort(kind="stable")
    if bound <= 1 << 16:
        return key.astype(np.uint16).argsort(kind="stable")
    return key.argsort(kind="stable")


def _as_number(values: np.ndarray) -> np.ndarray:
    """Booleans viewed as uint8 (0/1): numpy multiplies bytes by floats ~2× faster than bools."""
    return values.view(np.uint8) if values.dtype == bool else values


def _reduce_cols(values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Sums over runs of columns starting at ``at`` (float64); booleans are counted as bytes into
    int32, several times faster than a float sum."""
    if values.dtype == bool:
        return np.add.reduceat(values.view(np.uint8), at, axis=1, dtype=np.int32).astype(np.float64)
    return np.add.reduceat(values, at, axis=1, dtype=np.float64)


def _linearised(Y: np.ndarray, X: np.ndarray, alpha: np.ndarray, beta: np.ndarray, dom: np.ndarray,
                run_dom: np.ndarray, run_bounds: np.ndarray) -> np.ndarray:
    """z = Y/X − (R/X)·X per column (k, cells), with each cell's domain's 1/X (``alpha``) and R/X
    (``beta``): broadcast over long runs of one domain, gathered for many short ones."""
    k, m = Y.shape
    Z = np.empty((k, m))
    lengths = np.diff(run_bounds)
    if (lengths >= 64).all():
        for r in range(run_dom.shape[0]):
            s0, s1, d = run_bounds[r], run_bounds[r + 1], run_dom[r]
            z = Z[:, s0:s1]
            np.multiply(Y[:, s0:s1], alpha[d][:, None], out=z)
            z -= X[:, s0:s1] * beta[d][:, None]
        return Z
    np.multiply(Y, alpha.T[:, dom], out=Z)  # alpha.T[:, dom] is (k, m) like Y: no strided access
    Z -= X * beta.T[:, dom]
    return Z


def _gram_runs(Z: np.ndarray, run_bounds: np.ndarray, *, long_run: int = 64, many_runs: int = 4096,
               batch_cols: int = 1 << 15) -> np.ndarray:
    """Z_r Z_rᵀ for each column run r of Z (k, m) (``run_bounds``: offsets, one more than runs),
    stacked (runs, k, k).  A run is one matrix product; beyond ``many_runs`` short runs (tiny
    domains) they are padded with zero columns to the next power of two and multiplied as
    stacks, one batched product per size class, so the Python cost stops growing with the
    number of domains."""
    k = Z.shape[0]
    lengths = np.diff(run_bounds)
    out = np.zeros((lengths.shape[0], k, k))
    for r in np.flatnonzero(lengths >= long_run):
        zr = Z[:, run_bounds[r]:run_bounds[r + 1]]
        out[r] = zr @ zr.T
    short = np.flatnonzero((lengths < long_run) & (lengths > 0))
    if short.shape[0] <= many_runs:  # a product per run: cheaper than padding up to ~4,000 runs
        for r in short:
            zr = Z[:, run_bounds[r]:run_bounds[r + 1]]
            out[r] = zr @ zr.T
        return out
    Zp = np.concatenate((Z, np.zeros((k, 1))), axis=1)
    pad = Z.shape[1]
    size_class = np.ceil(np.log2(lengths[short])).astype(np.int64)
    for c in np.unique(size_class):
        runs = short[size_class == c]
        width = 1 << int(c)
        offsets = np.arange(width)
        step = max(1, batch_cols // width)
        for b0 in range(0, runs.shape[0], step):
            rb = runs[b0:b0 + step]
            idx = run_bounds[rb][:, None] + offsets[None, :]
            idx = np.where(offsets[None, :] < lengths[rb][:, None], idx, pad)
            A = Zp[:, idx].transpose(1, 0, 2)  # (runs, k, width)
            out[rb] = A @ A.transpose(0, 2, 1)
    return out


def _in_order(workers: int, task: Callable[[int], Any], n: int):
    """task(0..n-1) on up to ``workers`` threads (numpy releases the GIL in its loops), results
    yielded in index order; at most ``workers`` chunks are in flight, which bounds memory."""
    if workers <= 1 or n <= 1:
        for i in range(n):
            yield task(i)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = [pool.submit(task, i) for i in range(min(workers, n))]
        for i in range(n):
            result = pending.pop(0).result()
            if i + workers < n:
                pending.append(pool.submit(task, i + workers))
            yield result


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
    k = len(items)
    pos = {c: j for j, c in enumerate(items)}
    entries: list[tuple[str, str, np.ndarray | None]] = []
    for c in design.items:
        j = pos[c]
        coef = None
        if available[j]:
            coef = np.zeros(k)
            coef[j] = 1.0
        entries.append(("items", c, coef))
    elements, parts, overall = _composite_coefficients(design, items, available)
    entries += [("elements", e, v) for e, v in elements.items()]
    if parts is not None:
        entries += [("parts", p, v) for p, v in parts.items()]
    entries.append(("overall", "", overall))
    # All entries at once: values C·R and variances diag(C V Cᵀ) (the SE of each linear
    # combination from the full covariance, as linear_combination does one at a time).
    C = np.array([v if v is not None else np.zeros(k) for _, _, v in entries]).reshape(len(entries), k)
    values = 100.0 * (C @ safe_ratio)
    if cov is not None:
        safe_cov = np.nan_to_num(np.asarray(cov, dtype=np.float64), nan=0.0)
        ses = 100.0 * np.sqrt(np.clip(np.einsum("ij,jk,ik->i", C, safe_cov, C), 0.0, None))

    out: dict[str, Any] = {"items": {}, "elements": {}}
    if parts is not None:
        out["parts"] = {}
    for i, (section, name, coef) in enumerate(entries):
        if coef is None:
            cell = {"index": None, "se": None} if cov is not None else None
        elif cov is None:
            cell = float(values[i])
        else:
            cell = {"index": float(values[i]), "se": float(ses[i])}
        if section == "overall":
            out["overall"] = cell
        else:
            out[section][name] = cell
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
    # Column-major (items × respondents): the estimator sums runs of respondents per item.
    answers = np.ascontiguousarray(responses.answers[:, col].T)
    # "Satisfied" is usually the top of the scale (4, 5): one comparison; otherwise a lookup table
    # indexed by answer code + 1 (codes -1..5).  Both beat np.isin on large blocks.
    low = min(design.satisfied)
    top_of_scale = design.satisfied == tuple(range(low, 6))
    is_satisfied = np.zeros(7, dtype=bool)
    is_satisfied[np.asarray(design.satisfied) + 1] = True

    def get_ya(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        block = np.take(answers, rows, axis=1)  # (items, rows); ~4x faster than answers[:, rows]
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
