"""The back-check draw as a pure function: reproducible from its seed (like sampling's draws)."""

from __future__ import annotations

from services.verification import screening


def test_the_draw_is_reproducible_from_the_seed():
    forms = {"E1": [f"A{i:03d}" for i in range(40)], "E2": [f"B{i:03d}" for i in range(7)], "": ["C001"]}
    a = screening.draw_back_check(42, "w", "01", forms, 0.10, 2)
    assert a == screening.draw_back_check(42, "w", "01", {k: list(reversed(v)) for k, v in forms.items()}, 0.10, 2)
    assert {k: len(v) for k, v in a.items()} == {"E1": 4, "E2": 2, "": 1}  # ceil(10%), at least 2, at most all
    assert a != screening.draw_back_check(43, "w", "01", forms, 0.10, 2)
    assert screening.quota(0, 0.1, 2) == 0 and screening.quota(100, 0.1, 2) == 10 and screening.quota(5, 0.1, 2) == 2
