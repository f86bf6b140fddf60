"""Methodology versions (phương pháp đo lường) as data.

A methodology version is a JSON document (the survey service ships and serves them:
``services/survey/methodologies/<id>.json``, described by ``schema.json`` there) that defines the questionnaire -- parts, elements, items, the
expectation and profile questions -- and the aggregation and validity rules. The survey service
stores it; every other service reads it by id. The models here mirror the document
(``extra="forbid"``: a field that is not in the schema is an error) and add the checks a JSON
Schema cannot express (unique codes, references between parts of the document).

Answers are a flat mapping ``{question code: answer}`` where the question is an item
(``"access.seats"``), the expectation question (``"expectation"``) or a profile question
(``"gender"``). Answer codes: ``None`` = blank; ``"na"`` = the item did not apply (items only);
``likert5`` 1-5; ``scale3`` 1-3; ``yes_no`` 1 (Có, yes) / 2 (Không, no); ``single_choice`` an
option code; ``multi_choice`` and the expectation a list of option codes; ``text`` a string.
See docs/method/questionnaire.md.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


NA = "na"
"""Answer code for an item that did not apply (distinct from a blank, ``None``)."""

LIKERT_CODES = (1, 2, 3, 4, 5)
SCALE3_CODES = (1, 2, 3)
YES_NO_CODES = (1, 2)  # 1 = Có (yes), 2 = Không (no)

ItemType = Literal["likert5", "yes_no", "scale3", "single_choice", "multi_choice", "text"]
FrameKind = Literal["transaction", "resident"]

METHODOLOGY_ID_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,39}$"
_SIMPLE_CODE = r"^[a-z][a-z0-9_]*$"
_ITEM_CODE = r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$"
_OPTION_CODE = r"^[a-z0-9][a-z0-9_]*$"


def _nfc(value: str) -> str:
    return unicodedata.normalize("NFC", value)


Text = Annotated[str, Field(min_length=1, max_length=1000), AfterValidator(_nfc)]
SimpleCode = Annotated[str, Field(pattern=_SIMPLE_CODE, max_length=40)]
ItemCode = Annotated[str, Field(pattern=_ITEM_CODE, max_length=81)]
OptionCode = Annotated[str, Field(pattern=_OPTION_CODE, max_length=40)]
Share = Annotated[float, Field(ge=0, le=1)]
Year = Annotated[int, Field(ge=2000, le=2100)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _unique(codes: list[str], what: str) -> None:
    seen: set[str] = set()
    for code in codes:
        if code in seen:
            raise ValueError(f"duplicate {what} code {code!r}")
        seen.add(code)


class LocalText(_Model):
    """Vietnamese text (always, NFC-normalised on load) and optional English text."""

    vi: Text
    en: Text | None = None


class Option(_Model):
    code: OptionCode
    label: LocalText


class LikertLabel(_Model):
    code: int = Field(ge=1, le=5)
    label: LocalText


class Item(_Model):
    code: ItemCode
    text: LocalText
    type: ItemType
    options: list[Option] | None = Field(default=None, min_length=1)
    max_choices: int | None = Field(default=None, ge=1)
    scale_labels: list[LocalText] | None = Field(default=None, min_length=3, max_length=3)
    policy_group: SimpleCode | None = None

    @model_validator(mode="after")
    def _check_shape(self) -> Item:
        choice = self.type in ("single_choice", "multi_choice")
        if choice and not self.options:
            raise ValueError(f"item {self.code}: {self.type} needs options")
        if not choice and self.options is not None:
            raise ValueError(f"item {self.code}: only choice items have options")
        if self.type == "multi_choice":
            if self.max_choices is None:
                raise ValueError(f"item {self.code}: multi_choice needs max_choices")
        elif self.max_choices is not None:
            raise ValueError(f"item {self.code}: only multi_choice items have max_choices")
        if self.scale_labels is not None and self.type != "scale3":
            raise ValueError(f"item {self.code}: only scale3 items have scale_labels")
        if self.options:
            _unique([o.code for o in self.options], f"option (item {self.code})")
            if self.max_choices is not None and self.max_choices > len(self.options):
                raise ValueError(f"item {self.code}: max_choices exceeds the number of options")
        return self

    @functools.cached_property
    def option_codes(self) -> frozenset[str]:
        return frozenset(o.code for o in self.options or ())


class Element(_Model):
    code: SimpleCode
    label: LocalText
    overall_item: ItemCode | None = None
    items: list[Item] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_items(self) -> Element:
        for item in self.items:
            if not item.code.startswith(self.code + "."):
                raise ValueError(f"item {item.code} must start with its element code {self.code}.")
        if self.overall_item is not None:
            overall = next((i for i in self.items if i.code == self.overall_item), None)
            if overall is None:
                raise ValueError(f"element {self.code}: overall_item {self.overall_item} is not one of its items")
            if overall.type != "likert5":
                raise ValueError(f"element {self.code}: the overall item must be likert5")
        return self

    def index_items(self, rule: Literal["mean_of_items", "overall_item"] = "mean_of_items") -> list[str]:
        """Codes of the items whose indices make this element's index under ``rule``.

        ``mean_of_items``: every likert5 item except the overall item. ``overall_item``: the
        overall item alone; an element without one falls back to the mean of its items.
        """
        if rule == "overall_item" and self.overall_item is not None:
            return [self.overall_item]
        return [i.code for i in self.items if i.type == "likert5" and i.code != self.overall_item]


class Part(_Model):
    code: SimpleCode
    label: LocalText
    elements: list[Element] = Field(min_length=1)


class Expectation(_Model):
    """The expectation question (mong đợi): options to improve, choose up to ``max_choices``."""

    code: SimpleCode
    text: LocalText
    options: list[Option] = Field(min_length=1)
    max_choices: int = Field(ge=1)

    @model_validator(mode="after")
    def _check(self) -> Expectation:
        _unique([o.code for o in self.options], "expectation option")
        if self.max_choices > len(self.options):
            raise ValueError("expectation: max_choices exceeds the number of options")
        return self

    @functools.cached_property
    def option_codes(self) -> frozenset[str]:
        return frozenset(o.code for o in self.options)


class ProfileQuestion(_Model):
    """A respondent profile question. ``sensitive`` marks sensitive personal data (ethnicity)."""

    code: SimpleCode
    text: LocalText
    type: Literal["single_choice"] = "single_choice"
    sensitive: bool = False
    options: list[Option] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> ProfileQuestion:
        _unique([o.code for o in self.options], f"option (profile {self.code})")
        return self

    @functools.cached_property
    def option_codes(self) -> frozenset[str]:
        return frozenset(o.code for o in self.options)


class Aggregation(_Model):
    """How indices are computed (methodology §4). Defaults are the official rules."""

    weighting: Literal["none", "design"] = "none"
    element: Literal["mean_of_items", "overall_item"] = "mean_of_items"
    national: Literal["mean_of_provinces", "pooled"] = "mean_of_provinces"
    satisfied_codes: list[Annotated[int, Field(ge=1, le=5)]] = Field(default=[4, 5], min_length=1)
    suppress_below: int = Field(default=10, ge=0)
    unreliable_below: int = Field(default=30, ge=0)
    unreliable_cv: float = Field(default=0.15, gt=0)

    @model_validator(mode="after")
    def _check(self) -> Aggregation:
        if len(set(self.satisfied_codes)) != len(self.satisfied_codes):
            raise ValueError("satisfied_codes has duplicates")
        return self


class Validity(_Model):
    """Screening and back-check rules (methodology §6). Defaults are the official rules."""

    min_answered_share: Share = 0.5
    straight_lining_flag: bool = True
    min_online_seconds: int = Field(default=120, ge=0)
    back_check_share: Share = 0.10
    back_check_min_per_enumerator: int = Field(default=2, ge=0)
    denied_threshold: Share = 0.20


class AnswerError(_Model):
    """One problem with one answer. ``code`` is machine-readable, ``message`` is for people.

    Codes: ``unknown_item``, ``invalid_type``, ``out_of_range``, ``not_an_option``,
    ``duplicate_choice``, ``too_many_choices``, ``na_not_allowed``.
    """

    code: str
    item: str
    message: str


class Methodology(_Model):
    # Same rule as a wave's ``methodology_version`` (sampling service), so any id fits there.
    id: str = Field(pattern=METHODOLOGY_ID_PATTERN)
    title: LocalText
    valid_from: Year
    valid_to: Year | None = None
    frame_kind: FrameKind
    likert_scale: list[LikertLabel] = Field(min_length=5, max_length=5)
    policy_groups: list[Option] = Field(default_factory=list)
    parts: list[Part] = Field(min_length=1)
    expectation: Expectation
    profile: list[ProfileQuestion] = Field(default_factory=list)
    aggregation: Aggregation = Aggregation()
    validity: Validity = Validity()
    reserve_share: float = Field(default=0.5, ge=0, le=5)

    @model_validator(mode="after")
    def _check_document(self) -> Methodology:
        if [lab.code for lab in self.likert_scale] != list(LIKERT_CODES):
            raise ValueError("likert_scale must list codes 1, 2, 3, 4, 5 in order")
        if self.valid_to is not None and self.valid_to < self.valid_from:
            raise ValueError("valid_to is before valid_from")
        _unique([p.code for p in self.parts], "part")
        _unique([e.code for e in self.elements()], "element")
        _unique([g.code for g in self.policy_groups], "policy group")
        # Item, expectation and profile codes share one answer namespace.
        _unique(
            [i.code for i in self.items()] + [self.expectation.code] + [q.code for q in self.profile],
            "question",
        )
        groups = {g.code for g in self.policy_groups}
        for item in self.items():
            if item.policy_group is not None and item.policy_group not in groups:
                raise ValueError(f"item {item.code}: unknown policy group {item.policy_group!r}")
        return self

    # ------------------------------------------------------------------ navigation

    def elements(self) -> Iterator[Element]:
        for part in self.parts:
            yield from part.elements

    def items(self) -> Iterator[Item]:
        for element in self.elements():
            yield from element.items

    @functools.cached_property
    def _items_by_code(self) -> dict[str, Item]:
        return {i.code: i for i in self.items()}

    @functools.cached_property
    def _profile_by_code(self) -> dict[str, ProfileQuestion]:
        return {q.code: q for q in self.profile}

    def item(self, code: str) -> Item:
        """The item with this code (KeyError if none)."""
        return self._items_by_code[code]

    def part_of(self, item_code: str) -> Part:
        for part in self.parts:
            for element in part.elements:
                if any(i.code == item_code for i in element.items):
                    return part
        raise KeyError(item_code)

    def question_codes(self) -> list[str]:
        """Every code an answer may be keyed by: items, the expectation, profile questions."""
        return [i.code for i in self.items()] + [self.expectation.code] + [q.code for q in self.profile]

    def satisfaction_items(self) -> list[str]:
        """Item codes that count for the index under this document's ``aggregation.element``
        rule, in document order (likert5 items only; see ``Element.index_items``)."""
        rule = self.aggregation.element
        return [code for element in self.elements() for code in element.index_items(rule)]

    def sensitive_questions(self) -> list[str]:
        return [q.code for q in self.profile if q.sensitive]

    # ------------------------------------------------------------------ answers

    @functools.cached_property
    def _accepts(self) -> dict[str, tuple[frozenset | None, int | None]]:
        """Per question code, what a usual well-formed answer looks like: ``(codes, None)`` one
        code of ``codes`` (a scale code or an option), ``(options, k)`` a list of at most k
        distinct options, ``(None, None)`` any text. Deliberately narrow: ``"na"``, a tuple or
        anything unusual does not match and ``validate_answers`` then runs the full checks, so
        this only makes the common case cheap and never changes a result. Built once per
        version (a Vietnam Post batch checks 5,000 forms)."""
        scales = {"likert5": LIKERT_CODES, "scale3": SCALE3_CODES, "yes_no": YES_NO_CODES}
        accepts: dict[str, tuple[frozenset | None, int | None]] = {}
        for item in self.items():
            if item.type in scales:
                accepts[item.code] = (frozenset(scales[item.type]), None)
            elif item.type == "single_choice":
                accepts[item.code] = (item.option_codes, None)
            elif item.type == "multi_choice":
                accepts[item.code] = (item.option_codes, item.max_choices or 0)
            else:
                accepts[item.code] = (None, None)
        # "na" is refused on the expectation and profile questions even where it is an option code.
        accepts[self.expectation.code] = (self.expectation.option_codes - {NA}, self.expectation.max_choices)
        for q in self.profile:
            accepts[q.code] = (q.option_codes - {NA}, None)
        return accepts

    def validate_answers(self, answers: Mapping[str, Any]) -> list[AnswerError]:
        """Check a form's answers against this version. Never raises on bad answers: returns one
        error per bad answer (empty list = all well formed). Missing keys and ``None`` are blanks
        (a ``None`` keyed by an unknown code is still ``unknown_item``);
        ``"na"`` is accepted on items. Whether enough was answered is ``answered_share``'s job."""
        accepts = self._accepts
        for key, value in answers.items():
            spec = accepts.get(key) if type(key) is str else None
            if spec is None:
                return self._answer_errors(answers)
            if value is None:
                continue
            codes, k = spec
            t = type(value)
            if k is None:
                if codes is None:
                    if t is str:
                        continue
                elif (t is int or t is str) and value in codes:
                    continue
            elif t is list and len(value) <= k and len(set(map(type, value))) <= 1 and (
                    not value or (type(value[0]) is str and codes.issuperset(value) and len(set(value)) == len(value))):
                continue
            return self._answer_errors(answers)
        return []

    def _answer_errors(self, answers: Mapping[str, Any]) -> list[AnswerError]:
        """The full checks of ``validate_answers``, with one error per bad answer."""
        errors: list[AnswerError] = []

        def err(code: str, key: str, message: str) -> None:
            errors.append(AnswerError(code=code, item=str(key), message=message))

        for key, value in answers.items():
            if not isinstance(key, str):
                err("unknown_item", repr(key), "question codes are strings")
                continue
            item = self._items_by_code.get(key)
            known = item is not None or key == self.expectation.code or key in self._profile_by_code
            if not known:
                err("unknown_item", key, f"{key!r} is not a question of {self.id}")
                continue
            if value is None:
                continue
            if item is not None:
                if value == NA:
                    continue
                self._check_item(item, value, err)
            elif key == self.expectation.code:
                if value == NA:
                    err("na_not_allowed", key, "'na' is only for items; leave the expectation blank")
                    continue
                self._check_choices(key, value, self.expectation.option_codes, self.expectation.max_choices, err)
            else:
                q = self._profile_by_code[key]
                if value == NA:
                    err("na_not_allowed", key, "'na' is only for items; leave a profile question blank")
                elif not isinstance(value, str):
                    err("invalid_type", key, f"expected an option code, got {type(value).__name__}")
                elif value not in q.option_codes:
                    err("not_an_option", key, f"{value!r} is not an option of {key}")
        return errors

    @staticmethod
    def _check_item(item: Item, value: Any, err: Any) -> None:
        code = item.code
        if item.type in ("likert5", "scale3", "yes_no"):
            allowed = {"likert5": LIKERT_CODES, "scale3": SCALE3_CODES, "yes_no": YES_NO_CODES}[item.type]
            if isinstance(value, bool) or not isinstance(value, int):
                err("invalid_type", code, f"{item.type} answers are integer codes, got {type(value).__name__}")
            elif value not in allowed:
                err("out_of_range", code, f"{value} is not a {item.type} code ({allowed[0]}–{allowed[-1]})")
        elif item.type == "single_choice":
            if not isinstance(value, str):
                err("invalid_type", code, f"expected an option code, got {type(value).__name__}")
            elif value not in item.option_codes:
                err("not_an_option", code, f"{value!r} is not an option of {code}")
        elif item.type == "multi_choice":
            assert item.max_choices is not None
            Methodology._check_choices(code, value, item.option_codes, item.max_choices, err)
        elif item.type == "text":
            if not isinstance(value, str):
                err("invalid_type", code, f"expected text, got {type(value).__name__}")

    @staticmethod
    def _check_choices(code: str, value: Any, options: frozenset[str], k: int, err: Any) -> None:
        if not isinstance(value, list | tuple):
            err("invalid_type", code, f"expected a list of option codes, got {type(value).__name__}")
            return
        bad = [v for v in value if not isinstance(v, str) or v not in options]
        if bad:
            err("not_an_option", code, f"not options of {code}: {', '.join(map(repr, bad))}")
        if len(set(map(repr, value))) != len(value):
            err("duplicate_choice", code, "an option is chosen more than once")
        if len(value) > k:
            err("too_many_choices", code, f"{len(value)} options chosen, at most {k} allowed")

    @staticmethod
    def _is_scored(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value in LIKERT_CODES

    def answered_share(self, answers: Mapping[str, Any]) -> float:
        """Share of ``satisfaction_items()`` with a 1-5 answer (blank, ``na`` and invalid codes
        do not count). Screening rejects a form below ``validity.min_answered_share``."""
        codes = self.satisfaction_items()
        if not codes:
            return 0.0
        return sum(1 for c in codes if self._is_scored(answers.get(c))) / len(codes)

    def is_straight_lined(self, answers: Mapping[str, Any]) -> bool:
        """True if the form gives one and the same 1-5 code to every satisfaction item it answers,
        and answers at least ``validity.min_answered_share`` of them (and at least two). Pure
        detection: whether to flag is ``validity.straight_lining_flag``."""
        codes = self.satisfaction_items()
        scored = [answers[c] for c in codes if self._is_scored(answers.get(c))]
        if len(scored) < 2 or len(scored) < self.validity.min_answered_share * len(codes):
            return False
        return len(set(scored)) == 1


# ---------------------------------------------------------------------- reading


def parse_methodology(document: Mapping[str, Any]) -> Methodology:
    """Validate a methodology document (already parsed JSON) into the model."""
    return Methodology.model_validate(document)


async def fetch_methodology(app: Any, methodology_id: str) -> Methodology:
    """The methodology version ``methodology_id``, read from the survey service over HTTP and
    cached for the life of the app (a published version never changes, so the cache never goes
    stale). A version the survey service does not know is a 404 problem here too."""
    from shared.errors import NotFound
    from shared.peers import call

    cache: dict[str, Methodology] = getattr(app.state, "methodologies", None) or {}
    if methodology_id in cache:
        return cache[methodology_id]
    response = await call(app, "survey", "GET", f"/v1/methodologies/{methodology_id}")
    if response.status_code == 404:
        raise NotFound(f"No methodology version {methodology_id}.")
    response.raise_for_status()
    methodology = parse_methodology(response.json())
    cache[methodology_id] = methodology
    app.state.methodologies = cache
    return methodology
