"""Sample design for SIPAS waves: sample sizes, allocation across strata, reserve sizes.

Pure functions, no database, no web. The method is described in ``docs/method/sampling.md``;
the short version:

* :func:`required_sample_size` — n₀ = z²·p(1−p)/e², times the design effect, finite-population
  correction n = n₀ / (1 + (n₀ − 1)/N), divided by the expected response rate, rounded up, never
  more than N.
* :func:`allocate` — split a total sample over strata (``proportional``, ``equal`` or ``neyman``)
  with a minimum per stratum and a cap of N_h per stratum. The real-valued allocation is the
  clamped one ``x_h = clamp(λ·w_h, min(minimum, N_h), N_h)`` with λ chosen (exactly, in rational
  arithmetic) so that Σ x_h = total; it is then made integer by the largest-remainder method
  with ties broken by stratum key. The result is deterministic and sums exactly to ``total``.
* :func:`size_per_stratum` — each stratum sized from its own margin of error.
* :func:`reserve_size` / :func:`reserve_sizes` — ceil(share × n_h), capped by N_h − n_h.

Margins are on the proportion scale (0.05 = ±5 percentage points = ±5 points of a 0–100 index).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist
from typing import Literal

__all__ = [
    "AllocationMethod",
    "DesignError",
    "StratumPlan",
    "StratumSpec",
    "allocate",
    "plan_strata",
    "required_sample_size",
    "reserve_size",
    "reserve_sizes",
    "size_per_stratum",
    "total_of",
    "z_value",
]

AllocationMethod = Literal["proportional", "equal", "neyman"]
ALLOCATION_METHODS: tuple[str, ...] = ("proportional", "equal", "neyman")
DEFAULT_RESERVE_SHARE = 0.5

# A computed size within this distance above an integer is taken as that integer before rounding
# up, so that float noise (e.g. 385.00000000000006) never costs an extra interview.
_CEIL_TOLERANCE = 1e-9


class DesignError(ValueError):
    """An impossible or malformed design request; the message says what and why."""


@dataclass(frozen=True, slots=True)
class StratumSpec:
    """One stratum of the frame.

    ``key``: stable stratum key (e.g. ``"01|province|land"``); ``population``: frame size N_h;
    ``p``: anticipated proportion p_h (share satisfied) — needed for Neyman allocation, and used
    instead of the global ``p`` by :func:`size_per_stratum` when given.
    """

    key: str
    population: int
    p: float | None = None


@dataclass(frozen=True, slots=True)
class StratumPlan:
    """Sample size and reserve size decided for one stratum."""

    key: str
    population: int
    n: int
    n_reserve: int

    @property
    def pi(self) -> float:
        """Inclusion probability of an SRS of ``n`` from ``population`` (0 for an empty draw)."""
        return self.n / self.population if self.population and self.n else 0.0


# --------------------------------------------------------------------------------------------
# validation helpers


def _as_int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise DesignError(f"{name} must be an integer, got a bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise DesignError(f"{name} must be an integer, got {value!r}") from None


def _as_real(value: object, name: str) -> float:
    if isinstance(value, bool):
        raise DesignError(f"{name} must be a number, got a bool")
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DesignError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(x) or math.isinf(x):
        raise DesignError(f"{name} must be finite, got {value!r}")
    return x


def _ceil(x: float) -> int:
    return math.ceil(x - _CEIL_TOLERANCE)


def _check_strata(strata: Sequence[StratumSpec]) -> list[StratumSpec]:
    strata = list(strata)
    if not strata:
        raise DesignError("at least one stratum is required")
    seen: set[str] = set()
    for s in strata:
        if not isinstance(s, StratumSpec):
            raise DesignError(f"strata must be StratumSpec objects, got {type(s).__name__}")
        if not isinstance(s.key, str):
            raise DesignError(f"stratum key must be a string, got {s.key!r}")
        if s.key in seen:
            raise DesignError(f"duplicate stratum key {s.key!r}")
        seen.add(s.key)
        n = _as_int(s.population, f"population of stratum {s.key!r}")
        if n < 0:
            raise DesignError(f"population of stratum {s.key!r} is negative ({n})")
        if s.p is not None:
            p = _as_real(s.p, f"p of stratum {s.key!r}")
            if not 0.0 <= p <= 1.0:
                raise DesignError(f"p of stratum {s.key!r} must be in [0, 1], got {p}")
    return strata


# --------------------------------------------------------------------------------------------
# sample size


def z_value(confidence: float) -> float:
    """Two-sided standard-normal quantile z for a confidence level, e.g. 0.95 → 1.959963984540054."""
    c = _as_real(confidence, "confidence")
    if not 0.0 < c < 1.0:
        raise DesignError(f"confidence must be strictly between 0 and 1, got {confidence!r}")
    return NormalDist().inv_cdf(1.0 - (1.0 - c) / 2.0)


def required_sample_size(
    margin: float,
    confidence: float = 0.95,
    p: float = 0.5,
    population: int | None = None,
    design_effect: float = 1.0,
    response_rate: float = 1.0,
) -> int:
    """Number of units to *select* so a proportion is estimated within ±``margin``.

    Steps (in this order): n₀ = z²·p(1−p)/e²; n₀ ×= design effect; if ``population`` N is given,
    n = n₀ / (1 + (n₀ − 1)/N); n /= response rate; round up; never more than N (N is returned
    when the request would exceed it — a census).

    >>> required_sample_size(0.05)
    385
    >>> required_sample_size(0.05, population=1000)
    278
    """
    e = _as_real(margin, "margin")
    if not 0.0 < e < 1.0:
        raise DesignError(f"margin must be strictly between 0 and 1 (a proportion), got {margin!r}")
    z = z_value(confidence)
    pp = _as_real(p, "p")
    if not 0.0 < pp < 1.0:
        raise DesignError(f"p must be strictly between 0 and 1, got {p!r} (p(1−p) = 0 needs no sample)")
    deff = _as_real(design_effect, "design_effect")
    if deff <= 0.0:
        raise DesignError(f"design_effect must be positive, got {design_effect!r}")
    rr = _as_real(response_rate, "response_rate")
    if not 0.0 < rr <= 1.0:
        raise DesignError(f"response_rate must be in (0, 1], got {response_rate!r}")

    n = z * z * pp * (1.0 - pp) / (e * e)
    n *= deff
    big_n: int | None = None
    if population is not None:
        big_n = _as_int(population, "population")
        if big_n <= 0:
            raise DesignError(f"population must be a positive integer, got {population!r}")
        n = n / (1.0 + (n - 1.0) / big_n)
    n /= rr
    size = max(_ceil(n), 1)
    if big_n is not None and size > big_n:
        return big_n
    return size


def size_per_stratum(
    strata: Sequence[StratumSpec],
    margin: float,
    confidence: float = 0.95,
    p: float = 0.5,
    design_effect: float = 1.0,
    response_rate: float = 1.0,
    minimum: int = 0,
) -> dict[str, int]:
    """Per-stratum mode: each stratum sized from its own margin of error.

    n_h = :func:`required_sample_size` (margin, confidence, p_h or ``p``, N_h, design effect,
    response rate), raised to ``minimum`` and capped by N_h. Empty strata get 0.
    """
    strata = _check_strata(strata)
    minimum = _as_int(minimum, "minimum")
    if minimum < 0:
        raise DesignError(f"minimum must be non-negative, got {minimum}")
    out: dict[str, int] = {}
    for s in strata:
        n_h = int(s.population)
        if n_h == 0:
            out[s.key] = 0
            continue
        p_h = p if s.p is None else s.p
        size = required_sample_size(margin, confidence, p_h, n_h, design_effect, response_rate)
        out[s.key] = min(max(size, minimum), n_h)
    return out


# --------------------------------------------------------------------------------------------
# allocation


def _weights(strata: list[StratumSpec], method: str) -> list[Fraction]:
    if method == "proportional":
        return [Fraction(int(s.population)) for s in strata]
    if method == "equal":
        return [Fraction(1 if s.population > 0 else 0) for s in strata]
    if method == "neyman":
        missing = [s.key for s in strata if s.p is None]
        if missing:
            raise DesignError(f"neyman allocation needs p for every stratum; missing for {missing[:5]}")
        # N_h·S_h with S_h = sqrt(p_h(1−p_h)); Fraction(float) is exact, so this is reproducible.
        return [
            Fraction(int(s.population)) * Fraction(math.sqrt(float(s.p) * (1.0 - float(s.p))))  # type: ignore[arg-type]
            for s in strata
        ]
    raise DesignError(f"unknown allocation method {method!r}; use one of {ALLOCATION_METHODS}")


def _clamped_shares(weights: list[Fraction], lo: list[int], hi: list[int], total: int) -> list[Fraction]:
    """Exact x_h = clamp(λ·w_h, lo_h, hi_h) with Σ x_h = total (water-filling).

    f(λ) = Σ clamp(λ·w_h, lo_h, hi_h) is continuous, non-decreasing and piecewise linear; its
    breakpoints are lo_h/w_h (stratum starts to grow) and hi_h/w_h (stratum reaches its cap).
    We sweep the breakpoints in order, keeping f and its slope, and solve the linear piece that
    reaches ``total``. Everything is rational, so the result does not depend on float rounding.
    """
    base = sum(lo)
    if total == base:
        return [Fraction(v) for v in lo]
    events: list[tuple[Fraction, int, Fraction]] = []  # (λ, +1 start / -1 stop, w)
    for w, a, b in zip(weights, lo, hi):
        if w > 0 and b > a:
            events.append((a / w, 1, w))
            events.append((b / w, -1, w))
    events.sort(key=lambda e: (e[0], e[1]))
    f = Fraction(base)
    slope = Fraction(0)
    lam = Fraction(0)
    target = Fraction(total)
    solved: Fraction | None = None
    for at, kind, w in events:
        if slope > 0 and f + slope * (at - lam) >= target:
            solved = lam + (target - f) / slope
            break
        f += slope * (at - lam)
        lam = at
        slope += w if kind == 1 else -w
    if solved is None:
        if slope > 0:  # pragma: no cover - slope is 0 after the last stop event
            solved = lam + (target - f) / slope
        else:
            raise DesignError(
                f"cannot place a total of {total}: the strata that can take more units hold only "
                f"{int(f)} (with neyman, strata with p in {{0, 1}} get no units beyond the minimum)"
            )
    return [min(max(solved * w, Fraction(a)), Fraction(b)) for w, a, b in zip(weights, lo, hi)]


def allocate(
    strata: Sequence[StratumSpec],
    total: int,
    method: AllocationMethod = "proportional",
    minimum: int = 0,
) -> dict[str, int]:
    """Split ``total`` sample units over ``strata``.

    ``proportional``: n_h ∝ N_h; ``equal``: the same n_h everywhere; ``neyman``: n_h ∝ N_h·√(p_h(1−p_h)).
    Every stratum gets at least ``min(minimum, N_h)`` and at most N_h; the allocation is the
    clamped proportional one (the share of the unconstrained strata stays in the ratio of their
    weights), made integer by largest remainder with ties broken by ascending key. The values
    sum exactly to ``total``. The returned dict follows the order of ``strata``.

    Raises :class:`DesignError` when total > Σ N_h, when the minimums alone exceed ``total``,
    on an unknown method, on duplicate keys, or when Neyman lacks p_h.
    """
    strata = _check_strata(strata)
    total = _as_int(total, "total")
    minimum = _as_int(minimum, "minimum")
    if total < 0:
        raise DesignError(f"total must be non-negative, got {total}")
    if minimum < 0:
        raise DesignError(f"minimum must be non-negative, got {minimum}")
    weights = _weights(strata, method)
    pops = [int(s.population) for s in strata]
    capacity = sum(pops)
    if total > capacity:
        raise DesignError(f"total {total} exceeds the frame: the strata hold only {capacity} units")
    lo = [min(minimum, n) for n in pops]
    if sum(lo) > total:
        raise DesignError(
            f"minimum {minimum} per stratum over {len(strata)} strata needs {sum(lo)} units, "
            f"more than the total {total}"
        )
    shares = _clamped_shares(weights, lo, pops, total)
    floors = [math.floor(x) for x in shares]
    left = total - sum(floors)
    order = sorted(range(len(strata)), key=lambda i: (-(shares[i] - floors[i]), strata[i].key))
    for i in order:
        if left == 0:
            break
        if shares[i] > floors[i] and floors[i] < pops[i]:
            floors[i] += 1
            left -= 1
    if left != 0:  # pragma: no cover - Σ remainders is exactly `left` in rational arithmetic
        raise DesignError("internal error: largest-remainder rounding did not reach the total")
    return {s.key: n for s, n in zip(strata, floors)}


# --------------------------------------------------------------------------------------------
# reserves and plans


def reserve_size(n: int, population: int, share: float = DEFAULT_RESERVE_SHARE) -> int:
    """Reserve list length for a stratum: ceil(share × n), capped by population − n.

    ``share`` is read as the decimal it prints as (0.1 means exactly 1/10), so 0.1 × 30 = 3, not 4.
    """
    n = _as_int(n, "n")
    population = _as_int(population, "population")
    s = _as_real(share, "reserve share")
    if s < 0:
        raise DesignError(f"reserve share must be non-negative, got {share!r}")
    if n < 0 or population < 0:
        raise DesignError(f"n and population must be non-negative, got n={n}, population={population}")
    if n > population:
        raise DesignError(f"sample size {n} exceeds the stratum population {population}")
    wanted = math.ceil(Fraction(repr(s)) * n)
    return min(wanted, population - n)


def reserve_sizes(
    strata: Sequence[StratumSpec],
    sizes: Mapping[str, int],
    share: float = DEFAULT_RESERVE_SHARE,
) -> dict[str, int]:
    """:func:`reserve_size` for every stratum, given the sample sizes by key."""
    strata = _check_strata(strata)
    missing = [s.key for s in strata if s.key not in sizes]
    if missing:
        raise DesignError(f"no sample size given for strata {missing[:5]}")
    return {s.key: reserve_size(sizes[s.key], s.population, share) for s in strata}


def plan_strata(
    strata: Sequence[StratumSpec],
    sizes: Mapping[str, int],
    reserve_share: float = DEFAULT_RESERVE_SHARE,
) -> tuple[StratumPlan, ...]:
    """Combine sample sizes (from :func:`allocate` or :func:`size_per_stratum`) with reserve sizes."""
    reserves = reserve_sizes(strata, sizes, reserve_share)
    return tuple(
        StratumPlan(key=s.key, population=int(s.population), n=int(sizes[s.key]), n_reserve=reserves[s.key])
        for s in _check_strata(strata)
    )


def total_of(plans: Iterable[StratumPlan]) -> tuple[int, int]:
    """(Σ n_h, Σ reserve_h) of a plan."""
    n = r = 0
    for p in plans:
        n += p.n
        r += p.n_reserve
    return n, r
