"""Synthetic but realistic inputs of a national wave, all derived from one seed.

Nothing here talks to a service: the scenario (``demo/scenario.py``) feeds these records to the
public APIs. Every value is a pure function of (seed, province, position), so a re-run produces
the same frames, the same answers and the same published figures, and a re-run's pushes are
replays the services recognise (same batch ids, same content).

What makes the figures interesting to look at (and the checks meaningful):
* each province has its own service quality, so provinces differ and rankings mean something;
* procedures follow a realistic mix of fields (land, civil status, business registration...) and
  levels (commune handles most transactions, then the province, then central agencies);
* some units refuse or cannot be reached (replaced from the reserve list), some answer online;
* one province has a fraudulent enumerator who fills forms himself: straight-lined top marks,
  which the respondents deny at the back-check (phúc tra).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from shared.methodology import Methodology

# Fields of administrative procedures (lĩnh vực) with their share of transactions and the level
# that mostly handles them; shares follow the national public-service portal's published mix.
FIELDS: list[tuple[str, float, str]] = [
    ("civil_status", 0.24, "commune"),  # hộ tịch
    ("land", 0.18, "commune"),  # đất đai
    ("certification", 0.14, "commune"),  # chứng thực
    ("business_registration", 0.09, "province"),  # đăng ký kinh doanh
    ("construction", 0.07, "province"),  # xây dựng
    ("social_protection", 0.08, "commune"),  # bảo trợ xã hội
    ("labour", 0.05, "province"),  # lao động
    ("transport", 0.06, "province"),  # giao thông vận tải
    ("justice", 0.04, "province"),  # tư pháp
    ("tax", 0.03, "central"),  # thuế
    ("customs", 0.02, "central"),  # hải quan
]
FAMILY_NAMES = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ", "Hồ", "Ngô", "Dương", "Lý"]
MIDDLE_NAMES = ["Văn", "Thị", "Hữu", "Đức", "Minh", "Ngọc", "Thanh", "Quốc", "Thu", "Hoài"]
GIVEN_NAMES = ["An", "Bình", "Cường", "Dũng", "Giang", "Hà", "Hải", "Hạnh", "Hiếu", "Hoa", "Hùng", "Hương", "Khánh", "Lan", "Linh", "Long", "Mai", "Nam", "Nga", "Phương", "Quân", "Sơn", "Tâm", "Thảo", "Trang", "Tuấn", "Việt", "Yến"]


@dataclass(frozen=True)
class DemoConfig:
    """Size and behaviour of the simulated wave (defaults: the national wave of the issue)."""

    seed: int = 2026
    year: int = 2026
    methodology: str = "sipas-2017"
    frame_size: int = 2_000_000  # transaction records across all provinces
    sample_size: int = 40_000  # total sample wanted (split by the design)
    margin_of_error: float | None = None  # when set, sizes come from the margin instead
    provinces: tuple[str, ...] | None = None  # None: every province the sampling service knows
    refusal_rate: float = 0.04
    unreachable_rate: float = 0.03
    online_share: float = 0.12
    fraud_province_index: int = 3  # which province (by position) hosts the fraudulent enumerator
    fraud_forms: int = 40  # forms he fills himself in that province
    batch_size: int = 5000
    frame_batch_size: int = 10_000
    code: str = field(default="")

    @property
    def wave_code(self) -> str:
        return self.code or f"DEMO-{self.year}-{self.methodology.upper()}-{self.seed}"


def _rng(*parts: object) -> random.Random:
    """An independent stream per (seed, purpose, key): the same key always gives the same draws,
    whatever order the scenario asks in."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def province_quality(seed: int, province: str) -> float:
    """Latent service quality of a province on the 1–5 scale (between about 3.2 and 4.6)."""
    return 3.2 + 1.4 * _rng(seed, "quality", province).random()


def frame_sizes(cfg: DemoConfig, provinces: list[str]) -> dict[str, int]:
    """Split the national frame over provinces by a (seeded) population-like weight."""
    weights = {p: 0.3 + _rng(cfg.seed, "size", p).random() ** 2 * 3 for p in provinces}
    total = sum(weights.values())
    sizes = {p: max(50, int(cfg.frame_size * w / total)) for p, w in weights.items()}
    return sizes


def frame_records(cfg: DemoConfig, province: str, communes: list[str], n: int) -> Iterator[dict]:
    """The transaction frame a provincial portal sends: ``n`` records with contacts."""
    rng = _rng(cfg.seed, "frame", province)
    fields = [f for f, _, _ in FIELDS]
    shares = [s for _, s, _ in FIELDS]
    level_of = {f: lvl for f, _, lvl in FIELDS}
    start = dt.date(cfg.year, 1, 1)
    for i in range(n):
        f = rng.choices(fields, shares)[0]
        level = level_of[f] if rng.random() < 0.85 else rng.choice(["commune", "province", "central"])
        received = start + dt.timedelta(days=rng.randrange(0, 200))
        organisation = f in ("business_registration", "tax", "customs") and rng.random() < 0.6
        name = f"{rng.choice(FAMILY_NAMES)} {rng.choice(MIDDLE_NAMES)} {rng.choice(GIVEN_NAMES)}"
        commune = communes[rng.randrange(len(communes))] if communes else None
        yield {
            "transaction_id": f"{province}-{cfg.year}-{i:07d}",
            "province_code": province,
            "commune_code": commune,
            "procedure_code": f"{f[:3].upper()}-{rng.randrange(1, 40):03d}",
            "field": f,
            "level": level,
            "agency": None,
            "received_on": received.isoformat(),
            "result_on": (received + dt.timedelta(days=rng.randrange(1, 30))).isoformat(),
            "respondent_type": "organisation" if organisation else "citizen",
            "full_name": name,
            "phone": f"09{rng.randrange(10**7, 10**8)}",
            "address": f"Số {rng.randrange(1, 300)}, xã {commune or province}",
        }


@dataclass(frozen=True)
class Outcome:
    """What happens to one dispatched form in the field."""

    kind: str  # collected | online | refused | unreachable
    answers: dict | None = None
    duration_seconds: float | None = None
    fraudulent: bool = False


def field_outcome(cfg: DemoConfig, methodology: Methodology, place: str, province: str) -> Outcome:
    """The respondent's behaviour, a pure function of the unit's place in the sample (stratum,
    list, order): refuse, be unreachable, answer on paper (collected by Vietnam Post) or online."""
    rng = _rng(cfg.seed, "outcome", place)
    r = rng.random()
    if r < cfg.refusal_rate:
        return Outcome("refused")
    if r < cfg.refusal_rate + cfg.unreachable_rate:
        return Outcome("unreachable")
    kind = "online" if rng.random() < cfg.online_share else "collected"
    return Outcome(kind, honest_answers(cfg, methodology, rng, province), 300 + rng.random() * 900)


def honest_answers(cfg: DemoConfig, methodology: Methodology, rng: random.Random, province: str) -> dict:
    """A respondent's answers: a personal mood around the province's quality, each item around
    that mood; a few blanks and 'not applicable'; up to k expectation choices; profile answers."""
    mood = province_quality(cfg.seed, province) + rng.gauss(0, 0.6)
    answers: dict = {}
    for element in methodology.elements():
        tilt = _rng(cfg.seed, "element", province, element.code).gauss(0, 0.25)
        for item in element.items:
            u = rng.random()
            if u < 0.03:
                answers[item.code] = None
            elif u < 0.05:
                answers[item.code] = "na"
            else:
                answers[item.code] = min(5, max(1, round(mood + tilt + rng.gauss(0, 0.7))))
    options = [o.code for o in methodology.expectation.options]
    k = rng.randint(1, methodology.expectation.max_choices)
    answers[methodology.expectation.code] = sorted(rng.sample(options, min(k, len(options))))
    for question in methodology.profile:
        if question.sensitive and rng.random() < 0.3:
            continue
        answers[question.code] = rng.choice(question.options).code
    return answers


def fraudulent_answers(methodology: Methodology) -> dict:
    """What the fraudulent enumerator writes: every item 5, no expectation, no profile."""
    return {item.code: 5 for element in methodology.elements() for item in element.items}


def back_check_result(cfg: DemoConfig, fraudulent: bool, place: str) -> str:
    """What the provincial team hears when it calls back: respondents of the fraudulent
    enumerator never answered (denied); the rest mostly confirm."""
    if fraudulent:
        return "denied"
    r = _rng(cfg.seed, "back_check", place).random()
    return "confirmed" if r < 0.93 else "not_reached"
