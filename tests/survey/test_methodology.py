"""The shipped methodology documents, their schema, the pydantic models and answer validation."""

from __future__ import annotations

import copy
import json
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from services.survey.documents import METHODOLOGY_DIR, builtin_ids, load_builtin, load_schema
from shared.methodology import Methodology, parse_methodology

REPO = Path(__file__).resolve().parents[2]
IDS = ["sipas-2017", "sipas-2023"]
SERVICE_ELEMENTS = ["access", "procedures", "staff", "results", "feedback"]
ASPECTS = ["accountability", "participation", "quality", "impact"]
POLICY_GROUPS = [
    "economy", "health", "education", "water", "electricity",
    "public_order", "road_traffic", "social_welfare", "admin_reform",
]
PROFILE = ["gender", "age_band", "ethnicity", "education", "occupation", "urban_rural", "terrain"]


def raw(methodology_id: str) -> dict[str, Any]:
    return json.loads((METHODOLOGY_DIR / f"{methodology_id}.json").read_text(encoding="utf-8"))


def strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in strings(k) + strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return []


def local_texts(node: Any) -> list[dict[str, Any]]:
    """Every {vi, en} object in a document."""
    out = []
    if isinstance(node, dict):
        if "vi" in node:
            out.append(node)
        for v in node.values():
            out += local_texts(v)
    elif isinstance(node, list):
        for v in node:
            out += local_texts(v)
    return out


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


@pytest.fixture(scope="module")
def m17() -> Methodology:
    return load_builtin("sipas-2017")


@pytest.fixture(scope="module")
def m23() -> Methodology:
    return load_builtin("sipas-2023")


# ---------------------------------------------------------------------------- documents


def test_builtin_ids():
    assert builtin_ids() == IDS


@pytest.mark.parametrize("mid", IDS)
def test_document_valid_against_schema(validator, mid):
    errors = sorted(validator.iter_errors(raw(mid)), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


@pytest.mark.parametrize("mid", IDS)
def test_document_loads_into_models(mid):
    m = load_builtin(mid)
    assert m.id == mid
    # Round trip: the model dumps back to the document (nothing dropped, nothing invented).
    assert m.model_dump(mode="json", exclude_defaults=True) == parse_methodology(raw(mid)).model_dump(
        mode="json", exclude_defaults=True
    )
    assert parse_methodology(m.model_dump(mode="json")) == m


@pytest.mark.parametrize("mid", IDS)
def test_all_text_is_nfc(mid):
    text = (METHODOLOGY_DIR / f"{mid}.json").read_text(encoding="utf-8")
    assert unicodedata.is_normalized("NFC", text)
    for s in strings(raw(mid)):
        assert unicodedata.is_normalized("NFC", s), s
        assert s == s.strip(), s


@pytest.mark.parametrize("mid", IDS)
def test_every_text_has_vietnamese_and_english(mid):
    texts = local_texts(raw(mid))
    assert texts
    for t in texts:
        assert t["vi"].strip() and t.get("en"), t


@pytest.mark.parametrize("mid", IDS)
def test_codes_unique(mid):
    m = load_builtin(mid)
    codes = m.question_codes()
    assert [c for c, n in Counter(codes).items() if n > 1] == []
    assert len({e.code for e in m.elements()}) == len(list(m.elements()))
    # raw document too (the model would refuse duplicates anyway)
    item_codes = [i["code"] for p in raw(mid)["parts"] for e in p["elements"] for i in e["items"]]
    assert len(item_codes) == len(set(item_codes))


@pytest.mark.parametrize("mid", IDS)
def test_common_sections(mid):
    m = load_builtin(mid)
    assert [lab.label.vi for lab in m.likert_scale] == [
        "Rất không hài lòng", "Không hài lòng", "Bình thường", "Hài lòng", "Rất hài lòng",
    ]
    assert [q.code for q in m.profile] == PROFILE
    assert m.sensitive_questions() == ["ethnicity"]
    assert m.expectation.code == "expectation" and 1 <= m.expectation.max_choices < len(m.expectation.options)
    assert m.aggregation.model_dump() == {
        "weighting": "none", "element": "mean_of_items", "national": "mean_of_provinces",
        "satisfied_codes": [4, 5], "suppress_below": 10, "unreliable_below": 30, "unreliable_cv": 0.15,
    }
    assert m.validity.model_dump() == {
        "min_answered_share": 0.5, "straight_lining_flag": True, "min_online_seconds": 120,
        "back_check_share": 0.10, "back_check_min_per_enumerator": 2, "denied_threshold": 0.20,
    }
    assert m.reserve_share == 0.5


def test_sipas_2017_structure(m17):
    assert m17.frame_kind == "transaction"
    assert (m17.valid_from, m17.valid_to) == (2017, 2021)
    assert [p.code for p in m17.parts] == ["service"]
    elements = list(m17.elements())
    assert [e.code for e in elements] == SERVICE_ELEMENTS
    assert [len(e.items) for e in elements] == [4, 5, 6, 3, 4]
    assert len(list(m17.items())) == 22
    assert all(i.type == "likert5" for i in m17.items())
    assert all(e.overall_item is None for e in elements)
    assert m17.item("access.seats").text.vi == "Nơi ngồi chờ tại Bộ phận Một cửa có đủ chỗ ngồi"
    assert len(m17.satisfaction_items()) == 22
    assert m17.policy_groups == []


def test_sipas_2023_structure(m23):
    assert m23.frame_kind == "resident" and m23.valid_from == 2022 and m23.valid_to is None
    assert [p.code for p in m23.parts] == ["policy", "service"]
    policy, service = m23.parts
    assert [g.code for g in m23.policy_groups] == POLICY_GROUPS
    # Policy: one element per aspect, one item per policy group in each.
    assert [e.code for e in policy.elements] == ASPECTS
    for e in policy.elements:
        assert [i.policy_group for i in e.items] == POLICY_GROUPS
        assert [i.code for i in e.items] == [f"{e.code}.{g}" for g in POLICY_GROUPS]
        assert e.overall_item is None
    # Service: the same five elements, 3-5 items each plus an overall item.
    assert [e.code for e in service.elements] == SERVICE_ELEMENTS
    for e in service.elements:
        assert e.overall_item == f"{e.code}.overall"
        assert 3 <= len(e.items) - 1 <= 5
    assert all(i.type == "likert5" for i in m23.items())
    sat = m23.satisfaction_items()
    assert len(sat) == 36 + sum(len(e.items) - 1 for e in service.elements)
    assert not any(c.endswith(".overall") for c in sat)
    assert m23.part_of("access.overall").code == "service"
    assert m23.part_of("impact.health").code == "policy"


def test_overall_item_rule(m23):
    m = parse_methodology({**raw("sipas-2023"), "aggregation": {"element": "overall_item"}})
    sat = m.satisfaction_items()
    # policy elements have no overall item and fall back to their items
    assert sat == [i.code for e in m.parts[0].elements for i in e.items] + [f"{e}.overall" for e in SERVICE_ELEMENTS]
    assert m.aggregation.weighting == "none"  # defaults fill the rest


def test_unknown_builtin():
    with pytest.raises(KeyError):
        load_builtin("sipas-1999")


def test_docs_list_every_item_code():
    doc = (REPO / "docs" / "method" / "questionnaire.md").read_text(encoding="utf-8")
    for mid in IDS:
        for code in load_builtin(mid).question_codes():
            assert f"`{code}`" in doc, code


# ------------------------------------------------------------- broken documents rejected


def _mutate(fn) -> dict[str, Any]:
    doc = copy.deepcopy(raw("sipas-2023"))
    fn(doc)
    return doc


def _item0(doc):
    return doc["parts"][1]["elements"][0]["items"][0]


BROKEN_BOTH = {
    "extra top-level field": lambda d: d.update(colour="blue"),
    "extra item field": lambda d: _item0(d).update(weight=2),
    "missing vi": lambda d: d["title"].pop("vi"),
    "bad frame": lambda d: d.update(frame_kind="household"),
    "bad item type": lambda d: _item0(d).update(type="likert7"),
    "item code without element": lambda d: _item0(d).update(code="seats"),
    "bad id": lambda d: d.update(id="SIPAS 2023"),
    "choice without options": lambda d: _item0(d).update(type="single_choice"),
    "likert with options": lambda d: _item0(d).update(options=[{"code": "a", "label": {"vi": "A"}}]),
    "multi without max": lambda d: _item0(d).update(type="multi_choice", options=[{"code": "a", "label": {"vi": "A"}}]),
    "likert scale order": lambda d: d["likert_scale"].reverse(),
    "four likert labels": lambda d: d["likert_scale"].pop(),
    "bad aggregation": lambda d: d["aggregation"].update(element="median"),
    "share above one": lambda d: d["validity"].update(min_answered_share=1.5),
    "profile not single choice": lambda d: d["profile"][0].update(type="multi_choice"),
    "no parts": lambda d: d.update(parts=[]),
}

BROKEN_MODEL_ONLY = {
    "duplicate item code": lambda d: d["parts"][1]["elements"][0]["items"].append(copy.deepcopy(_item0(d))),
    "item outside its element": lambda d: _item0(d).update(code="staff.extra"),
    "overall item missing": lambda d: d["parts"][1]["elements"][0].update(overall_item="access.nothing"),
    "unknown policy group": lambda d: d["parts"][0]["elements"][0]["items"][0].update(policy_group="space"),
    "profile code clashes": lambda d: d["profile"].append(copy.deepcopy(d["profile"][0])),
    "duplicate option": lambda d: d["expectation"]["options"].append(copy.deepcopy(d["expectation"]["options"][0])),
    "k above options": lambda d: d["expectation"].update(max_choices=99),
    "valid_to before from": lambda d: d.update(valid_to=2020),
}


@pytest.mark.parametrize("name", BROKEN_BOTH)
def test_schema_and_model_reject(validator, name):
    doc = _mutate(BROKEN_BOTH[name])
    assert list(validator.iter_errors(doc)), name
    with pytest.raises(ValidationError):
        parse_methodology(doc)


@pytest.mark.parametrize("name", BROKEN_MODEL_ONLY)
def test_model_rejects(name):
    with pytest.raises(ValidationError):
        parse_methodology(_mutate(BROKEN_MODEL_ONLY[name]))


def test_minimal_document_gets_defaults(validator):
    doc = raw("sipas-2017")
    for key in ("aggregation", "validity", "reserve_share"):
        doc.pop(key)
    assert not list(validator.iter_errors(doc))
    m = parse_methodology(doc)
    assert m.aggregation.satisfied_codes == [4, 5] and m.validity.back_check_share == 0.10
    assert m.reserve_share == 0.5


def test_text_is_nfc_normalised_on_load():
    doc = raw("sipas-2017")
    nfd = unicodedata.normalize("NFD", "Nơi ngồi chờ")
    doc["parts"][0]["elements"][0]["items"][0]["text"]["vi"] = nfd
    m = parse_methodology(doc)
    assert m.item("access.seats").text.vi == unicodedata.normalize("NFC", nfd)


# ------------------------------------------------------------------------ answers


def full(m: Methodology, value: int = 4) -> dict[str, Any]:
    return {c: value for c in m.satisfaction_items()}


def codes(errors) -> list[tuple[str, str]]:
    return [(e.code, e.item) for e in errors]


def test_valid_form(m23):
    answers = full(m23) | {
        "access.overall": 5,
        "expectation": ["online_services", "policy_information"],
        "gender": "female", "age_band": "35_44", "ethnicity": "minority", "education": "university",
        "occupation": "farming", "urban_rural": "rural", "terrain": "mountain",
    }
    assert m23.validate_answers(answers) == []


def test_blank_and_na_accepted(m17):
    answers = full(m17) | {"access.seats": None, "staff.polite": "na", "expectation": None, "gender": None}
    assert m17.validate_answers(answers) == []
    assert m17.validate_answers({}) == []


def test_unknown_item(m17):
    errors = m17.validate_answers({"access.seats": 4, "access.online": 4, "religion": "x"})
    assert codes(errors) == [("unknown_item", "access.online"), ("unknown_item", "religion")]
    assert all(e.message for e in errors)


@pytest.mark.parametrize("value", [0, 6, -1, 45])
def test_out_of_range(m17, value):
    assert codes(m17.validate_answers({"results.accurate": value})) == [("out_of_range", "results.accurate")]


@pytest.mark.parametrize("value", ["4", 4.0, True, [4], "NA", "blank"])
def test_wrong_type(m17, value):
    assert codes(m17.validate_answers({"results.accurate": value})) == [("invalid_type", "results.accurate")]


def test_expectation_too_many_choices(m17):
    chosen = [o.code for o in m17.expectation.options[:4]]
    errors = m17.validate_answers({"expectation": chosen})
    assert codes(errors) == [("too_many_choices", "expectation")]
    assert m17.validate_answers({"expectation": chosen[:3]}) == []
    assert m17.validate_answers({"expectation": []}) == []


@pytest.mark.parametrize(
    "value, error",
    [
        (["lower_fees", "free_lunch"], "not_an_option"),
        (["lower_fees", "lower_fees"], "duplicate_choice"),
        ("lower_fees", "invalid_type"),
        ("na", "na_not_allowed"),
    ],
)
def test_expectation_bad_choices(m17, value, error):
    assert codes(m17.validate_answers({"expectation": value})) == [(error, "expectation")]


def test_profile_answers(m17):
    assert m17.validate_answers({"gender": "male", "terrain": "island"}) == []
    errors = m17.validate_answers({"gender": "robot", "age_band": 3, "ethnicity": "na"})
    assert codes(errors) == [("not_an_option", "gender"), ("invalid_type", "age_band"), ("na_not_allowed", "ethnicity")]


def test_errors_are_per_item_and_never_raise(m23):
    garbage: dict[Any, Any] = {
        "access.channels": 9, "access.online": {"x": 1}, "nope": 1, 7: 3,
        "expectation": ["a", "b", "c", "d"], "gender": ["male"],
    }
    errors = m23.validate_answers(garbage)
    assert {e.item for e in errors} == {"access.channels", "access.online", "nope", "7", "expectation", "gender"}


@pytest.fixture(scope="module")
def m_types() -> Methodology:
    """sipas-2017 with one item of every other question type added."""
    doc = raw("sipas-2017")
    feedback = doc["parts"][0]["elements"][4]
    opts = [{"code": c, "label": {"vi": c.upper()}} for c in ("phone", "email", "box", "portal")]
    feedback["items"] += [
        {"code": "feedback.gave", "text": {"vi": "Ông/Bà đã từng góp ý"}, "type": "yes_no"},
        {"code": "feedback.trend", "text": {"vi": "So với trước"}, "type": "scale3",
         "scale_labels": [{"vi": "Kém hơn"}, {"vi": "Như cũ"}, {"vi": "Tốt hơn"}]},
        {"code": "feedback.first", "text": {"vi": "Kênh dùng nhiều nhất"}, "type": "single_choice", "options": opts},
        {"code": "feedback.used", "text": {"vi": "Các kênh đã dùng"}, "type": "multi_choice", "options": opts,
         "max_choices": 2},
        {"code": "feedback.comment", "text": {"vi": "Ý kiến khác"}, "type": "text"},
    ]
    jsonschema.validate(doc, load_schema(), cls=jsonschema.Draft202012Validator)
    return parse_methodology(doc)


def test_other_item_types(m_types):
    ok = {"feedback.gave": 1, "feedback.trend": 3, "feedback.first": "box", "feedback.used": ["phone", "portal"],
          "feedback.comment": "Cần thêm ghế chờ", "feedback.gave2": None}
    assert codes(m_types.validate_answers(ok)) == [("unknown_item", "feedback.gave2")]
    bad = {"feedback.gave": 3, "feedback.trend": 4, "feedback.first": "fax", "feedback.used": ["phone", "email", "box"],
           "feedback.comment": 5}
    assert codes(m_types.validate_answers(bad)) == [
        ("out_of_range", "feedback.gave"), ("out_of_range", "feedback.trend"), ("not_an_option", "feedback.first"),
        ("too_many_choices", "feedback.used"), ("invalid_type", "feedback.comment"),
    ]
    assert codes(m_types.validate_answers({"feedback.used": ["fax"]})) == [("not_an_option", "feedback.used")]
    # only likert5 items count for the index
    assert len(m_types.satisfaction_items()) == 22


def _answer_values(m: Methodology):
    """Answers near the edges: every option and scale code, na, blanks, wrong types, lists of
    options with repeats and too many choices, tuples, booleans and floats."""
    from hypothesis import strategies as st

    options = sorted({o for i in m.items() for o in i.option_codes} | m.expectation.option_codes
                     | {o for q in m.profile for o in q.option_codes})
    atom = st.one_of(st.sampled_from(options + ["na", "", "x"]), st.integers(-1, 6), st.booleans(),
                     st.just(None), st.sampled_from([1.0, 4.0, 2.5]))
    return st.one_of(atom, st.lists(atom, max_size=5), st.lists(st.sampled_from(options), max_size=5).map(tuple))


@pytest.mark.parametrize("which", ["m17", "m_types"])
def test_quick_answer_check_never_changes_a_result(which, request):
    """``validate_answers`` takes a shortcut for the usual well-formed answers; on any answers
    it must give exactly what the full checks give (same errors, same order)."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    m = request.getfixturevalue(which)
    keys = st.sampled_from(m.question_codes() + ["nope", "access.nope"])

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.dictionaries(keys, _answer_values(m), max_size=12))
    def check(answers):
        assert m.validate_answers(answers) == m._answer_errors(answers)

    check()
    assert m.validate_answers(full(m)) == m._answer_errors(full(m)) == []


# ------------------------------------------------------------------ screening helpers


def test_answered_share(m17):
    assert m17.answered_share({}) == 0.0
    assert m17.answered_share(full(m17)) == 1.0
    sat = m17.satisfaction_items()
    half = {c: (3 if i < 11 else None) for i, c in enumerate(sat)}
    assert m17.answered_share(half) == 0.5
    # na, blanks, out-of-range and wrong types do not count
    messy = {sat[0]: "na", sat[1]: 7, sat[2]: True, sat[3]: "4", sat[4]: 5, "expectation": ["lower_fees"]}
    assert m17.answered_share(messy) == pytest.approx(1 / 22)


def test_answered_share_2023_ignores_overall_items(m23):
    assert m23.answered_share({f"{e}.overall": 5 for e in SERVICE_ELEMENTS}) == 0.0


def test_straight_lining(m17):
    assert m17.is_straight_lined(full(m17, 5))
    assert m17.is_straight_lined(full(m17, 3) | {"access.seats": None, "staff.polite": "na"})
    varied = full(m17, 5) | {"results.accurate": 4}
    assert not m17.is_straight_lined(varied)
    assert not m17.is_straight_lined({})
    # too few answers to call it straight-lining (the form fails the answered-share rule anyway)
    assert not m17.is_straight_lined({"access.seats": 5, "staff.polite": 5})
