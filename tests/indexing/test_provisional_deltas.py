"""The provisional sums of a batch of decisions (``service.ProvisionalDeltas``) against a plain
loop over every answer: same rows, same order, the same floats bit for bit.

The batch sums with ``np.bincount`` and reads answers through a getter per key order; what could
break is an answer counted that should not be (True hashes like 1, 4.0 equals 4, lists, "na",
codes out of range, keys that are not items), a form whose keys come in another order, a reversal
that leaves a touched row at zero, or a float sum taken in another order.
"""

from __future__ import annotations

import random

from services.indexing.service import ProvisionalDeltas, _is_item_key


def loop_sums(batch):
    """What the sums must be: each form's item answers 1-5 added one at a time, in order."""
    cells: dict = {}
    strata: dict = {}
    for wave_id, form, sign in batch:
        key = (form["stratum"], form["province_code"] or "", form["level"] or "", form["field"] or "")
        w = sign * float(form["weight"])
        s = strata.setdefault((wave_id, key[0]), [0.0, 0])
        s[0] += w
        s[1] += sign
        for item, v in (form["answers"] or {}).items():
            if type(v) is int and 1 <= v <= 5 and _is_item_key(item):
                acc = cells.setdefault((wave_id, key), {}).setdefault(item, [0.0] * 5 + [0] * 5)
                acc[v - 1] += w
                acc[4 + v] += sign
    rows = [(cell, item, acc[:5], acc[5:]) for cell, items in sorted(cells.items())
            for item, acc in sorted(items.items())]
    return rows, strata


def random_batch(seed: int, n: int):
    rng = random.Random(seed)
    items = [f"{e}.{i}" for e in ("access", "staff", "results") for i in ("a1", "a2", "b3")]
    odd_values = [None, "na", 0, 6, -1, True, False, 4.0, "4", [4], {"v": 4}]
    forms = []
    for f in range(n):
        keys = items + ["expectation.e1", "profile.gender", "Note"]
        if f % 7 == 0:
            rng.shuffle(keys)  # another key order: another getter
        answers = {}
        for k in keys:
            if k == "expectation.e1":
                answers[k] = ["faster"]
            elif k == "profile.gender":
                answers[k] = "female"
            elif k == "Note":
                answers[k] = 3  # an int, but not an item key
            elif rng.random() < 0.1:
                answers[k] = rng.choice(odd_values)
            else:
                answers[k] = rng.randint(1, 5)
        if f % 11 == 0:
            answers = {k: v for k, v in answers.items() if k != items[f % len(items)]}  # one item missing
        if f % 13 == 0:
            answers = {}  # a form with no answers still counts in its stratum
        forms.append({"stratum": f"s{f % 5}", "province_code": f"{f % 3:02d}", "level": rng.choice(["commune", None]),
                      "field": "f1", "weight": rng.uniform(10, 90), "answers": answers})
    batch = [("w1" if f % 4 else "w2", form, +1) for f, form in enumerate(forms)]
    # reversals: some forms taken out again in the same batch (their rows stay, at zero or less)
    batch += [(wave, form, -1) for wave, form, _ in batch[::3]]
    return batch


def test_batch_sums_equal_a_loop_over_every_answer_bit_for_bit():
    for seed in range(5):
        batch = random_batch(seed, 300)
        deltas = ProvisionalDeltas()
        for wave_id, form, sign in batch:
            deltas.add(wave_id, form, sign)
        keys, items, sum_w, count = deltas.totals()
        want_rows, want_strata = loop_sums(batch)
        got_rows = [(k, i, list(w), list(c)) for k, i, w, c in zip(keys, items, sum_w.tolist(), count.tolist())]
        assert got_rows == want_rows  # floats compared exactly: same additions in the same order
        assert deltas.strata == want_strata
        assert any(c == [0] * 5 for *_, c in got_rows)  # a reversal left a touched row at zero


def test_a_batch_without_item_answers_writes_only_strata():
    deltas = ProvisionalDeltas()
    deltas.add("w", {"stratum": "s", "province_code": None, "level": None, "field": None, "weight": 5,
                     "answers": {"expectation.e1": ["x"], "access.a1": "na"}}, +1)
    keys, items, sum_w, count = deltas.totals()
    assert (keys, items, sum_w.shape, count.shape) == ([], [], (0, 5), (0, 5))
    assert deltas.strata == {("w", "s"): [5.0, 1]}
