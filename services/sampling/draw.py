"""Seeded, reproducible selection for SIPAS waves (no database, no web).

Reproducibility contract — the same frame, design and seed give a byte-identical sample (and
:func:`sample_hash`) on any machine, OS or Python build:

1. **Canonical frame order.** Unit ids are strings, put in Unicode code-point order (Python's
   ``str`` ordering, identical to NumPy's ``U`` ordering — *not* a locale collation, which differs
   between machines for Vietnamese text). The order in which a frame arrives never matters.
   Duplicated ids are an error. A frame that is already in code-point order (e.g. ``ORDER BY id
   COLLATE "C"``) is only checked (O(N), vectorised), not sorted.
2. **One random stream per stratum.** The stream of stratum ``k`` in a wave with seed ``s`` is
   ``Generator(PCG64(SeedSequence(int(sha256(f"{s}:{k}")))))``. Because each stratum's stream
   depends only on the seed and its own key, re-drawing (or changing the frame of) one stratum
   changes no other stratum, and strata can be drawn in any order or in parallel. SHA-256 is used
   instead of Python's ``hash()``, which is salted per process (PYTHONHASHSEED) and differs
   between builds. PCG64 and SeedSequence are NumPy's documented, platform-independent bit
   generator and seeding (their streams are kept stable across NumPy releases).
3. **The selection algorithm is part of the contract** (see :func:`draw_stratum`,
   :func:`systematic_pps`). It uses NumPy only for bounded uniform integers
   (``Generator.integers``), whose algorithm NumPy does not formally freeze; golden tests in
   ``tests/sampling/test_draw.py`` pin exact samples so an upgrade that changes them is caught.
4. **Exact probabilities.** Inclusion probabilities are computed as exact fractions and rounded
   once to the nearest float; :func:`sample_hash` serialises floats with ``repr`` (shortest
   round-trip form, the same on every platform).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import numpy as np

from services.sampling.design import DesignError, StratumPlan, reserve_size

__all__ = [
    "HASH_FORMAT",
    "MultiStageDraw",
    "PPSDraw",
    "PPSUnit",
    "PersonDraw",
    "Role",
    "SampleRow",
    "Seed",
    "StratumDraw",
    "VillageDraw",
    "canonical_ids",
    "draw_strata",
    "draw_stratum",
    "multi_stage",
    "pps_probabilities",
    "sample_hash",
    "serialise_rows",
    "stream",
    "stream_entropy",
    "stream_key",
    "systematic_pps",
]

Seed = int | str
Role = Literal["sample", "reserve"]
HASH_FORMAT = "sipas-sample/1"
_ROLE_RANK = {"sample": 0, "reserve": 1}


# --------------------------------------------------------------------------------------------
# streams


def _seed_text(seed: Seed) -> str:
    if isinstance(seed, bool):
        raise DesignError("seed must be an integer or a string, got a bool")
    if isinstance(seed, str):
        if not seed:
            raise DesignError("seed must not be empty")
        if ":" in seed:
            raise DesignError("a string seed must not contain ':' (it separates seed and stratum key)")
        return seed
    try:
        return str(operator.index(seed))
    except TypeError:
        raise DesignError(f"seed must be an integer or a string, got {seed!r}") from None


def stream_entropy(seed: Seed, key: str) -> int:
    """The 256-bit entropy of a stream: ``int(sha256(f"{seed}:{key}"), big-endian)``."""
    if not isinstance(key, str):
        raise DesignError(f"stratum key must be a string, got {key!r}")
    digest = hashlib.sha256(f"{_seed_text(seed)}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest, "big")


def stream(seed: Seed, key: str) -> np.random.Generator:
    """The random stream of one stratum (or one stage unit) of a wave."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(stream_entropy(seed, key))))


def stream_key(*parts: str) -> str:
    """Unambiguous composite stream key, e.g. for the stages of a multi-stage draw.

    JSON-encoded so that no choice of ids can make two different tuples give the same key
    (``("a|b", "c")`` and ``("a", "b|c")`` stay distinct).
    """
    for p in parts:
        if not isinstance(p, str):
            raise DesignError(f"stream key parts must be strings, got {p!r}")
    return json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------------------------------------
# canonical frames


def canonical_ids(unit_ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """The frame's ids as a NumPy string array in code-point order; rejects duplicates and non-strings."""
    arr = np.asarray(unit_ids)
    if arr.ndim != 1:
        raise DesignError("unit ids must be a flat sequence of strings")
    if arr.size == 0:
        return np.empty(0, dtype="<U1")
    if arr.dtype.kind == "O":
        if not all(isinstance(x, str) for x in arr.tolist()):
            raise DesignError("unit ids must be strings")
        arr = arr.astype(str)
    elif arr.dtype.kind != "U":
        raise DesignError(f"unit ids must be strings, got an array of {arr.dtype}")
    if arr.size > 1 and not bool(np.all(arr[:-1] <= arr[1:])):
        arr = np.sort(arr, kind="stable")
    if arr.size > 1:
        dup = np.flatnonzero(arr[:-1] == arr[1:])
        if dup.size:
            raise DesignError(f"duplicate unit id in frame: {str(arr[dup[0]])!r} ({dup.size} duplicates)")
    return arr


def _permutation_prefix(rng: np.random.Generator, population: int, k: int) -> list[int]:
    """First ``k`` positions of a uniformly random permutation of 0..population−1.

    Sparse (dictionary-backed) Fisher–Yates: for i = 0..k−1 draw j_i uniform on [i, N) — all k
    draws in one vectorised call ``rng.integers(arange(k), N)`` — swap positions i and j_i of the
    virtual array 0..N−1 and output position i. Cost O(k) time and memory, independent of N.
    The draws are consumed in order, so the first k' < k outputs are the same whatever k is:
    the sample does not depend on the reserve size, and a reserve list can be lengthened later
    without changing the sample or the reserves already issued.
    """
    if k == 0:
        return []
    js = rng.integers(np.arange(k, dtype=np.int64), population, dtype=np.int64).tolist()
    moved: dict[int, int] = {}
    out: list[int] = []
    for i, j in enumerate(js):
        at_i = moved.get(i, i)
        out.append(moved.get(j, j))
        moved[j] = at_i
    return out


# --------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True, slots=True)
class SampleRow:
    """One selected unit, flattened for storage and for :func:`sample_hash`.

    ``stratum``/``psu``/``ssu`` identify the replacement group (a reserve unit replaces a unit of
    the same group); ``order`` is 1-based within (group, role). For a reserve row, ``pi`` and
    ``weight`` are those the unit carries if it is used as a replacement.
    """

    stratum: str
    role: Role
    order: int
    unit_id: str
    pi: float
    weight: float
    psu: str = ""
    ssu: str = ""
    pi_stages: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class StratumDraw:
    """A simple random sample without replacement from one stratum, with its ordered reserve list.

    ``sample`` is in draw order (any prefix of it is itself a simple random sample); ``reserve``
    is the replacement order. Every sampled unit has π = n/N and base weight N/n.
    """

    stratum_key: str
    population: int
    n: int
    sample: tuple[str, ...]
    reserve: tuple[str, ...]
    pi: float
    weight: float

    @property
    def n_reserve(self) -> int:
        return len(self.reserve)

    def rows(self) -> tuple[SampleRow, ...]:
        rows = [
            SampleRow(self.stratum_key, "sample", i, uid, self.pi, self.weight)
            for i, uid in enumerate(self.sample, start=1)
        ]
        rows += [
            SampleRow(self.stratum_key, "reserve", i, uid, self.pi, self.weight)
            for i, uid in enumerate(self.reserve, start=1)
        ]
        return tuple(rows)


@dataclass(frozen=True, slots=True)
class PPSUnit:
    unit_id: str
    size: int
    pi: float
    certainty: bool
    pi_exact: Fraction = field(repr=False, compare=False, default=Fraction(0))


@dataclass(frozen=True, slots=True)
class PPSDraw:
    """A systematic PPS sample.

    ``selected`` is in canonical id order. Certainty units (π = 1) are flagged. After removing
    them, the remaining ``n_systematic`` units are chosen with step T′/n′ (T′ = remaining total
    size) and random start ``random_start``/n′: the selection points, in units of size along the
    canonically ordered cumulated sizes, are (random_start + j·T′)/n′ for j = 0..n′−1.
    """

    key: str
    n: int
    total_size: int
    n_units: int
    n_certainty: int
    n_systematic: int
    remaining_size: int
    random_start: int
    selected: tuple[PPSUnit, ...]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(u.unit_id for u in self.selected)


@dataclass(frozen=True, slots=True)
class VillageDraw:
    """One selected village (SSU) of a multi-stage draw and what was drawn in it."""

    psu_id: str
    ssu_id: str
    pi_psu: float
    pi_ssu: float
    population: int
    n: int
    n_reserve: int


@dataclass(frozen=True, slots=True)
class PersonDraw:
    """One person of a multi-stage draw with the stage-wise and overall inclusion probabilities."""

    unit_id: str
    psu_id: str
    ssu_id: str
    role: Role
    order: int
    pi_psu: float
    pi_ssu: float
    pi_unit: float
    pi: float
    weight: float


@dataclass(frozen=True, slots=True)
class MultiStageDraw:
    stratum_key: str
    communes: PPSDraw
    village_method: Literal["pps", "srs"]
    villages: tuple[VillageDraw, ...]
    persons: tuple[PersonDraw, ...]

    @property
    def sample(self) -> tuple[PersonDraw, ...]:
        return tuple(p for p in self.persons if p.role == "sample")

    @property
    def reserve(self) -> tuple[PersonDraw, ...]:
        return tuple(p for p in self.persons if p.role == "reserve")

    def rows(self) -> tuple[SampleRow, ...]:
        return tuple(
            SampleRow(
                stratum=self.stratum_key,
                role=p.role,
                order=p.order,
                unit_id=p.unit_id,
                pi=p.pi,
                weight=p.weight,
                psu=p.psu_id,
                ssu=p.ssu_id,
                pi_stages=(p.pi_psu, p.pi_ssu, p.pi_unit),
            )
            for p in self.persons
        )


# --------------------------------------------------------------------------------------------
# stratified simple random sampling


def _draw_srs(ids: np.ndarray, n: int, n_reserve: int, seed: Seed, key: str) -> StratumDraw:
    big_n = int(ids.size)
    if n < 0 or n_reserve < 0:
        raise DesignError(f"stratum {key!r}: n and n_reserve must be non-negative (got {n}, {n_reserve})")
    if n > big_n:
        raise DesignError(f"stratum {key!r}: sample size {n} exceeds the frame size {big_n}")
    if n == 0:
        n_reserve = 0  # a reserve only replaces sampled units
    n_reserve = min(n_reserve, big_n - n)
    picks = _permutation_prefix(stream(seed, key), big_n, n + n_reserve)
    chosen = ids[np.asarray(picks, dtype=np.int64)].tolist() if picks else []
    pi = Fraction(n, big_n) if n else Fraction(0)
    return StratumDraw(
        stratum_key=key,
        population=big_n,
        n=n,
        sample=tuple(chosen[:n]),
        reserve=tuple(chosen[n:]),
        pi=float(pi),
        weight=float(1 / pi) if n else 0.0,
    )


def draw_stratum(
    unit_ids: Sequence[str] | np.ndarray,
    n: int,
    n_reserve: int,
    seed: Seed,
    stratum_key: str,
) -> StratumDraw:
    """Simple random sample without replacement of ``n`` units, plus ``n_reserve`` ordered reserves.

    The ids are put in canonical (code-point) order; the stratum's stream yields the first
    n + n_reserve positions of a uniformly random permutation of that order (see
    :func:`_permutation_prefix`); the first n are the sample, the next n_reserve the reserve list
    in replacement order. The reserve is capped at N − n (a note, not an error); n > N is an
    error. π = n/N and base weight N/n for every sampled unit. An n of 0 gives an empty draw.
    """
    n = _int(n, "n")
    n_reserve = _int(n_reserve, "n_reserve")
    return _draw_srs(canonical_ids(unit_ids), n, n_reserve, seed, _key(stratum_key))


def draw_strata(
    frames: Mapping[str, Sequence[str] | np.ndarray],
    plans: Iterable[StratumPlan],
    seed: Seed,
) -> dict[str, StratumDraw]:
    """Draw every planned stratum from its own stream (order of drawing is irrelevant).

    Each plan's ``population`` must equal the size of its frame — a frame that changed since
    the design was made is refused rather than silently drawn with stale probabilities.
    """
    out: dict[str, StratumDraw] = {}
    for plan in plans:
        if plan.key not in frames:
            raise DesignError(f"no frame for stratum {plan.key!r}")
        ids = canonical_ids(frames[plan.key])
        if ids.size != plan.population:
            raise DesignError(
                f"stratum {plan.key!r}: the frame has {ids.size} units but the design assumed {plan.population}"
            )
        out[plan.key] = _draw_srs(ids, plan.n, plan.n_reserve, seed, plan.key)
    return out


# --------------------------------------------------------------------------------------------
# systematic PPS


def _int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise DesignError(f"{name} must be an integer, got a bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise DesignError(f"{name} must be an integer, got {value!r}") from None


def _key(key: object) -> str:
    if not isinstance(key, str):
        raise DesignError(f"stratum key must be a string, got {key!r}")
    return key


def _canonical_sized(units: Iterable[tuple[str, int]], what: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for u in units:
        try:
            uid, size = u
        except (TypeError, ValueError):
            raise DesignError(f"{what} must be (id, size) pairs, got {u!r}") from None
        if not isinstance(uid, str):
            raise DesignError(f"{what} ids must be strings, got {uid!r}")
        size = _int(size, f"size of {what} {uid!r}")
        if size <= 0:
            raise DesignError(f"size of {what} {uid!r} must be a positive integer, got {size}")
        out.append((uid, size))
    out.sort(key=lambda t: t[0])
    for a, b in itertools.pairwise(out):
        if a[0] == b[0]:
            raise DesignError(f"duplicate {what} id {a[0]!r}")
    return out


def _certainty_split(
    units: list[tuple[str, int]], n: int, key: str
) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int, int]:
    """Split canonical units into certainty units and the rest: (certain, rest, n′, T′)."""
    if n < 0:
        raise DesignError(f"{key!r}: n must be non-negative, got {n}")
    if n > len(units):
        raise DesignError(f"{key!r}: cannot select {n} of {len(units)} units without replacement")
    certain: list[tuple[str, int]] = []
    rest = units
    n_rest = n
    # Certainty units: size ≥ step = T/n, i.e. n·size ≥ T. Take them with π = 1, remove them and
    # recompute the step on the rest, until no remaining unit reaches the step.
    while n_rest > 0:
        t = sum(s for _, s in rest)
        big = [u for u in rest if n_rest * u[1] >= t]
        if not big:
            break
        big_ids = {u[0] for u in big}
        certain += big
        rest = [u for u in rest if u[0] not in big_ids]
        n_rest -= len(big)
    return certain, rest, n_rest, sum(s for _, s in rest)


def _pps_pis(certain, rest, n_rest: int, t_rest: int) -> dict[str, Fraction]:
    pis = {uid: Fraction(1) for uid, _ in certain}
    for uid, size in rest:
        pis[uid] = Fraction(n_rest * size, t_rest) if n_rest else Fraction(0)
    return pis


def pps_probabilities(units: Iterable[tuple[str, int]], n: int) -> dict[str, float]:
    """π_i of every unit under :func:`systematic_pps` with sample size n (no draw; Σπ_i = n)."""
    n = _int(n, "n")
    canon = _canonical_sized(units, "unit")
    certain, rest, n_rest, t_rest = _certainty_split(canon, n, "pps")
    pis = _pps_pis(certain, rest, n_rest, t_rest)
    return {uid: float(pis[uid]) for uid, _ in canon}


def _pps(units: list[tuple[str, int]], n: int, rng_factory, key: str) -> tuple[PPSDraw, dict[str, Fraction]]:
    total = sum(s for _, s in units)
    certain, rest, n_rest, t_rest = _certainty_split(units, n, key)
    pis: dict[str, Fraction] = {uid: Fraction(1) for uid, _ in certain}
    start = 0
    if n_rest > 0:
        # Integer systematic selection, exact for integer sizes: scaled by n′, the points are
        # r + j·T′ (j = 0..n′−1) with r uniform on {0, …, T′−1}, and unit i is hit when a point
        # lies in [n′·C_{i−1}, n′·C_i). Exactly n′·size_i of the T′ values of r hit unit i
        # (n′·size_i < T′, so at most once), hence π_i = n′·size_i/T′.
        start = int(rng_factory().integers(0, t_rest))
        bounds = [n_rest * c for c in itertools.accumulate(s for _, s in rest)]
        for j in range(n_rest):
            i = bisect.bisect_right(bounds, start + j * t_rest)
            uid, size = rest[i]
            pis[uid] = Fraction(n_rest * size, t_rest)
        if len(pis) != n:  # pragma: no cover - guaranteed by n′·size < T′
            raise DesignError(f"{key!r}: internal error in systematic selection")
    cert_ids = {uid for uid, _ in certain}
    selected = tuple(
        PPSUnit(unit_id=uid, size=size, pi=float(pis[uid]), certainty=uid in cert_ids, pi_exact=pis[uid])
        for uid, size in units
        if uid in pis
    )
    draw = PPSDraw(
        key=key,
        n=n,
        total_size=total,
        n_units=len(units),
        n_certainty=len(certain),
        n_systematic=n_rest,
        remaining_size=t_rest,
        random_start=start,
        selected=selected,
    )
    return draw, pis


def systematic_pps(units: Iterable[tuple[str, int]], n: int, seed: Seed, key: str) -> PPSDraw:
    """Systematic sampling with probability proportional to size (integer sizes, e.g. population).

    Units are put in canonical id order (with GSO codes this is also a geographic order, which
    gives the draw an implicit geographic stratification). Units with n·size ≥ T (size at least
    one step) are certainty units (π = 1); they are taken and the step is recomputed on the rest
    until none is left. The others are selected systematically from one random start; π_i =
    n′·size_i/T′ (= n·size_i/T when there is no certainty unit), so Σπ = n exactly.

    Note for variance estimation: systematic PPS has some zero joint inclusion probabilities;
    treat the PSUs as drawn with replacement (the usual ultimate-cluster approximation), with
    certainty units as their own strata.
    """
    key = _key(key)
    n = _int(n, "n")
    canon = _canonical_sized(units, "unit")
    draw, _ = _pps(canon, n, lambda: stream(seed, key), key)
    return draw


# --------------------------------------------------------------------------------------------
# multi-stage: communes PPS → villages PPS or SRS → people SRS


def multi_stage(
    communes: Iterable[tuple[str, int]],
    villages: Mapping[str, Iterable[tuple[str, int]] | Iterable[str]],
    residents: Mapping[str, Sequence[str] | np.ndarray],
    *,
    n_communes: int,
    villages_per_commune: int,
    people_per_village: int,
    seed: Seed,
    stratum_key: str = "",
    village_method: Literal["pps", "srs"] = "pps",
    reserve_share: float = 0.5,
) -> MultiStageDraw:
    """Three-stage draw for resident frames (sipas-2023).

    Stage 1: ``n_communes`` communes (PSUs) by systematic PPS on the commune sizes.
    Stage 2: in each selected commune, ``villages_per_commune`` villages (SSUs) by systematic PPS
    on village sizes (``village_method="pps"``) or by SRS (``"srs"``; sizes, if given, are
    ignored); a commune with fewer villages gives all of them (π = 1).
    Stage 3: in each selected village, ``people_per_village`` residents by SRS (all of them when
    fewer), plus an ordered reserve of ceil(reserve_share·n_v) residents capped by N_v − n_v.

    Overall π = π_psu·π_ssu·π_unit (exact product, rounded once), base weight 1/π. Streams:
    stage 1 uses ``stream_key(stratum_key, "psu")``, stage 2 ``stream_key(stratum_key, "ssu",
    commune)``, stage 3 ``stream_key(stratum_key, "unit", commune, village)`` — so a change in one
    village's resident list changes only that village's draw, and a change in one commune's
    village list only that commune's villages (and the people drawn in them).

    With PPS at both stages on measures of size equal to the resident counts and a fixed take
    per village, the design is self-weighting (π ≈ n_c·m·k/N for everyone).
    """
    key = _key(stratum_key)
    if village_method not in ("pps", "srs"):
        raise DesignError(f"village_method must be 'pps' or 'srs', got {village_method!r}")
    n_communes = _int(n_communes, "n_communes")
    m = _int(villages_per_commune, "villages_per_commune")
    k = _int(people_per_village, "people_per_village")
    if m <= 0 or k <= 0:
        raise DesignError("villages_per_commune and people_per_village must be positive")

    psu_key = stream_key(key, "psu")
    psu_draw, psu_pis = _pps(_canonical_sized(communes, "commune"), n_communes, lambda: stream(seed, psu_key), psu_key)

    village_rows: list[VillageDraw] = []
    persons: list[PersonDraw] = []
    for commune in psu_draw.selected:
        c_id = commune.unit_id
        if c_id not in villages:
            raise DesignError(f"no village list for selected commune {c_id!r}")
        ssu_key = stream_key(key, "ssu", c_id)
        listed = list(villages[c_id])
        if not listed:
            raise DesignError(f"selected commune {c_id!r} has no villages")
        ssu_pis: dict[str, Fraction]
        if village_method == "pps":
            canon = _canonical_sized(listed, "village")
            _, ssu_pis = _pps(canon, min(m, len(canon)), lambda: stream(seed, ssu_key), ssu_key)
            ssu_ids = sorted(ssu_pis)
        else:
            ids = [v if isinstance(v, str) else v[0] for v in listed]
            canon_ids = canonical_ids(ids)
            take = min(m, int(canon_ids.size))
            srs = _draw_srs(canon_ids, take, 0, seed, ssu_key)
            ssu_ids = sorted(srs.sample)
            ssu_pis = {v: Fraction(take, int(canon_ids.size)) for v in ssu_ids}

        for v_id in ssu_ids:
            if v_id not in residents:
                raise DesignError(f"no resident list for selected village {v_id!r} (commune {c_id!r})")
            people = canonical_ids(residents[v_id])
            n_v = int(people.size)
            take = min(k, n_v)
            r_v = reserve_size(take, n_v, reserve_share)
            draw = _draw_srs(people, take, r_v, seed, stream_key(key, "unit", c_id, v_id))
            pi1, pi2 = psu_pis[c_id], ssu_pis[v_id]
            pi3 = Fraction(take, n_v) if take else Fraction(0)
            village_rows.append(VillageDraw(c_id, v_id, float(pi1), float(pi2), n_v, take, len(draw.reserve)))
            pi = pi1 * pi2 * pi3
            weight = float(1 / pi) if pi else 0.0
            for role, ids_ in (("sample", draw.sample), ("reserve", draw.reserve)):
                for order, uid in enumerate(ids_, start=1):
                    persons.append(
                        PersonDraw(
                            unit_id=uid,
                            psu_id=c_id,
                            ssu_id=v_id,
                            role=role,  # type: ignore[arg-type]
                            order=order,
                            pi_psu=float(pi1),
                            pi_ssu=float(pi2),
                            pi_unit=float(pi3),
                            pi=float(pi),
                            weight=weight,
                        )
                    )
    return MultiStageDraw(
        stratum_key=key,
        communes=psu_draw,
        village_method=village_method,
        villages=tuple(village_rows),
        persons=tuple(persons),
    )


# --------------------------------------------------------------------------------------------
# fingerprint


def _fmt(x: float) -> str:
    return repr(float(x))


def _row_sort_key(r: SampleRow) -> tuple:
    return (r.stratum, r.psu, r.ssu, _ROLE_RANK[r.role], r.order, r.unit_id)


def serialise_rows(rows: Iterable[SampleRow]) -> bytes:
    """Canonical byte serialisation of a sample (what :func:`sample_hash` hashes).

    First line ``sipas-sample/1``; then one JSON array per row, sorted by (stratum, psu, ssu,
    role — sample before reserve —, order, unit id):
    ``[stratum, psu, ssu, role, order, unit_id, repr(pi), repr(weight), [repr(pi_stage), ...]]``,
    compact separators, ASCII-escaped, each followed by ``\\n``. Floats are written with Python's
    ``repr`` (shortest string that round-trips), identical on every platform.
    """
    lines = [HASH_FORMAT]
    for r in sorted(rows, key=_row_sort_key):
        if r.role not in _ROLE_RANK:
            raise DesignError(f"unknown row role {r.role!r}")
        lines.append(
            json.dumps(
                [r.stratum, r.psu, r.ssu, r.role, int(r.order), r.unit_id, _fmt(r.pi), _fmt(r.weight),
                 [_fmt(x) for x in r.pi_stages]],
                ensure_ascii=True,
                separators=(",", ":"),
            )
        )
    return ("\n".join(lines) + "\n").encode("ascii")


def sample_hash(rows: Iterable[SampleRow]) -> str:
    """SHA-256 (hex) of :func:`serialise_rows`: the same frame + design + seed give the same hash anywhere."""
    return hashlib.sha256(serialise_rows(rows)).hexdigest()
