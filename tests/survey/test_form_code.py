"""Form codes: format, Damm check character, normalisation, QR payload."""

from __future__ import annotations

import random

import pytest

from services.survey.form_code import (
    ALPHABET,
    MAX_SERIAL,
    check_character,
    damm_op,
    make_form_code,
    qr_payload,
    validate_form_code,
)

SAMPLE_CODES = [
    make_form_code("S26", 0),
    make_form_code("S26", 19000),
    make_form_code("BD26", 4711),
    make_form_code("HCM", MAX_SERIAL),
]


def _body(code: str) -> str:
    return code.replace("-", "")


def test_alphabet_has_no_lookalikes():
    assert len(ALPHABET) == len(set(ALPHABET)) == 32
    assert not set("0O1I") & set(ALPHABET)


def test_quasigroup_is_totally_antisymmetric():
    """The properties the Damm algorithm rests on, checked over the whole table."""
    n = len(ALPHABET)
    for x in range(n):
        assert sorted(damm_op(x, y) for y in range(n)) == list(range(n))  # rows are permutations
        assert sorted(damm_op(y, x) for y in range(n)) == list(range(n))  # columns too
    for c in range(n):
        for x in range(n):
            for y in range(n):
                if x != y:
                    assert damm_op(damm_op(c, x), y) != damm_op(damm_op(c, y), x)


@pytest.mark.parametrize("code", SAMPLE_CODES)
def test_every_single_substitution_detected_exhaustively(code):
    body = _body(code)
    for pos in range(len(body)):
        for ch in ALPHABET:
            if ch == body[pos]:
                continue
            typo = body[:pos] + ch + body[pos + 1 :]
            assert validate_form_code(typo).status == "bad_check_digit", typo


@pytest.mark.parametrize("code", SAMPLE_CODES)
def test_every_adjacent_transposition_detected_exhaustively(code):
    body = _body(code)
    for pos in range(len(body) - 1):
        if body[pos] == body[pos + 1]:
            continue
        typo = body[:pos] + body[pos + 1] + body[pos] + body[pos + 2 :]
        assert validate_form_code(typo).status == "bad_check_digit", typo


def test_all_transpositions_of_every_character_pair_detected():
    """Every ordered pair (x, y), x != y, in every position of a code: swapping them is caught."""
    prefix = "S26"
    for pos in range(len(prefix) + 5 - 1):  # includes the last serial char / check char swap
        for x in ALPHABET:
            for y in ALPHABET:
                if x == y:
                    continue
                body = (prefix + "23456")[:pos] + x + y + (prefix + "23456")[pos + 2 :]
                body = body[: len(prefix) + 5]
                full = body + check_character(body)
                swapped = full[:pos] + full[pos + 1] + full[pos] + full[pos + 2 :]
                assert validate_form_code(full).ok
                assert not validate_form_code(swapped).ok
    # and the swap of the last serial character with the check character
    for serial in range(0, 4096, 7):
        full = _body(make_form_code(prefix, serial))
        if full[-1] != full[-2]:
            assert not validate_form_code(full[:-2] + full[-1] + full[-2]).ok


def test_single_errors_over_a_random_sample():
    rng = random.Random(2026)
    for _ in range(200):
        prefix = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(2, 4)))
        body = _body(make_form_code(prefix, rng.randint(0, MAX_SERIAL)))
        pos = rng.randrange(len(body))
        ch = rng.choice(ALPHABET.replace(body[pos], ""))
        assert not validate_form_code(body[:pos] + ch + body[pos + 1 :]).ok
        pos = rng.randrange(len(body) - 1)
        if body[pos] != body[pos + 1]:
            assert not validate_form_code(body[:pos] + body[pos + 1] + body[pos] + body[pos + 2 :]).ok


@pytest.mark.parametrize("serial", [0, 1, 31, 32, 12345, 999_999, MAX_SERIAL])
@pytest.mark.parametrize("prefix", ["S26", "bd26", "HCM", "Q7", "ZZZZ"])
def test_round_trip(prefix, serial):
    code = make_form_code(prefix, serial)
    result = validate_form_code(code)
    assert result.ok and result.status == "ok"
    assert result.code == code
    assert result.wave_prefix == prefix.upper()
    assert result.serial == serial
    head, serial_text, check = code.split("-")
    assert head == prefix.upper() and len(serial_text) == 5 and len(check) == 1


def test_codes_are_unique_and_ordered_by_serial():
    codes = [make_form_code("S26", s) for s in range(3000)]
    assert len(set(codes)) == len(codes)
    assert [c.split("-")[1] for c in codes] == sorted(c.split("-")[1] for c in codes)


@pytest.mark.parametrize(
    "typed",
    [
        "s26-22lks-v",
        "S26 22LKS V",
        "  s26 22 lks v ",
        "S2622LKSV",
        "S26–22LKS—V",  # en and em dashes from word processors
        "S26_22LKS_V",
        "Ｓ２６－２２ＬＫＳ－Ｖ",  # full-width characters from a phone keyboard
        "S26-\t22LKS-\nV",
    ],
)
def test_normalises_what_people_type(typed):
    result = validate_form_code(typed)
    assert result.ok, result
    assert result.code == "S26-22LKS-V" == make_form_code("S26", 19000)
    assert result.serial == 19000


@pytest.mark.parametrize(
    "bad",
    ["", "   ", "S26", "S26-2O2LKS-V", "S2I-22LKS-V", "S26-22LKS-V-X-Y-Z", "S26/22LKS/V", "X-22LKS-V"],
)
def test_malformed(bad):
    result = validate_form_code(bad)
    assert result.status == "malformed"
    assert not result.ok and result.serial is None and result.message


def test_dropped_character_is_not_accepted():
    # With a 2-4 character prefix, a code missing one character can still parse (as a shorter
    # prefix); the check character then catches it unless the fold happens to be 0 (1 in 32).
    code = _body(make_form_code("S26", 19000))
    for pos in range(len(code)):
        assert not validate_form_code(code[:pos] + code[pos + 1 :]).ok


def test_non_string_is_malformed_not_an_exception():
    assert validate_form_code(None).status == "malformed"  # type: ignore[arg-type]
    assert validate_form_code(12345).status == "malformed"  # type: ignore[arg-type]


def test_bad_check_digit_keeps_canonical_form():
    result = validate_form_code("s26 22lks w")
    assert result.status == "bad_check_digit"
    assert result.code == "S26-22LKS-W" and result.serial is None


@pytest.mark.parametrize("prefix", ["S", "SIPAS", "S20", "SO", "S1", "", "S-"])
def test_make_rejects_bad_prefix(prefix):
    with pytest.raises(ValueError):
        make_form_code(prefix, 1)


@pytest.mark.parametrize("serial", [-1, MAX_SERIAL + 1, 1.0, True, "7"])
def test_make_rejects_bad_serial(serial):
    with pytest.raises(ValueError):
        make_form_code("S26", serial)  # type: ignore[arg-type]


def test_qr_payload():
    code = make_form_code("S26", 19000)
    assert qr_payload(code, "https://khaosat.example.vn/f") == "https://khaosat.example.vn/f/S26-22LKS-V"
    assert qr_payload("s26 22lks v", "https://khaosat.example.vn/f/") == "https://khaosat.example.vn/f/S26-22LKS-V"
    assert qr_payload(code, "https://x.example/f", token="a b/c") == "https://x.example/f/S26-22LKS-V?t=a%20b%2Fc"


@pytest.mark.parametrize(
    "code, base",
    [
        ("S26-22LKS-W", "https://x.example/f"),
        ("garbage", "https://x.example/f"),
        ("S26-22LKS-V", "ftp://x.example/f"),
        ("S26-22LKS-V", "x.example/f"),
        ("S26-22LKS-V", "https://x.example/f?a=1"),
        ("S26-22LKS-V", "https://x.example/f#top"),
    ],
)
def test_qr_payload_rejects(code, base):
    with pytest.raises(ValueError):
        qr_payload(code, base)
