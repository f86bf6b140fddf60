"""Verification: screening rules, the back-check draw, and responses decided end to end.

    python -m bench.verification [--quick] [--json PATH]

1. ``screen()`` on sipas-2017 responses (every rule, findings with parameters) against the bare
   answer checks it builds on (``validate_answers`` + ``answered_share``);
2. a national back-check draw (PCG64 stream per province and enumerator, 10%, at least 2) against
   the standard library's ``random.sample`` with the same quotas (not reproducible across Python
   versions, hence not used);
3. ``response.submitted`` events published on the in-process bus of an embedded stack (SQLite)
   until every response has its decision announced in the outbox: the consumer's throughput.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import random
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

from bench.common import Result, parser, report, timed
from services.verification import screening
from shared.methodology import parse_methodology

ROOT = Path(__file__).resolve().parents[1]
METHODOLOGY = ROOT / "services" / "survey" / "methodologies" / "sipas-2017.json"


def _answers(m, n: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    items = m.satisfaction_items()
    out = []
    for _ in range(n):
        a = {c: rng.choice([1, 2, 3, 4, 5, None]) for c in items}
        if rng.random() < 0.02:
            a[items[0]] = 9  # out of range
        out.append(a)
    return out


def bench_screening(n: int) -> list[Result]:
    m = parse_methodology(json.loads(METHODOLOGY.read_text()))
    params = screening.effective_parameters(m, {})
    answers = _answers(m, n)

    def rules():
        return [screening.screen(m, params, a, channel="online", duration_seconds=90.0, in_sample=True)
                for a in answers]

    def bare():
        return [(m.validate_answers(a), m.answered_share(a)) for a in answers]

    t_rules, found = timed(rules)
    t_bare, _ = timed(bare)
    rejected = sum(screening.outcome_of(f) == "rejected" for f in found)
    return [Result(f"screen() on {n:,} responses", n / t_rules, "responses/s", n / t_bare,
                   "validate_answers + answered_share", note=f"{rejected:,} rejected")]


def bench_draw(n_forms: int) -> list[Result]:
    rng = random.Random(7)
    provinces = [f"{i:02d}" for i in range(1, 35)]
    by_province: dict[str, dict[str, list[str]]] = {p: defaultdict(list) for p in provinces}
    for i in range(n_forms):
        p = rng.choice(provinces)
        by_province[p][f"{p}-E{rng.randrange(20):02d}"].append(f"F{i:07d}")

    def ours():
        return sum(len(c) for p in provinces
                   for c in screening.draw_back_check(2026, "wave", p, by_province[p], 0.10, 2).values())

    def stdlib():
        r = random.Random(2026)
        total = 0
        for p in provinces:
            for e, codes in sorted(by_province[p].items()):
                total += len(r.sample(sorted(codes), screening.quota(len(codes), 0.10, 2)))
        return total

    t_ours, selected = timed(ours)
    t_std, _ = timed(stdlib)
    again = ours()
    return [Result(f"back-check draw, {n_forms:,} forms in 34 provinces", t_ours * 1000, "ms", t_std * 1000,
                   "random.sample, same quotas", higher_is_better=False,
                   note=f"{selected:,} selected; same seed, same list: {again == selected}")]


async def _end_to_end(n: int) -> list[Result]:
    from sqlalchemy import func, select

    from services.embedded import embedded_stack
    from shared.contracts.sampling import SampleDrawn, SampledUnit, StratumSummary, WaveCreated
    from shared.contracts.survey import ResponseSubmitted
    from shared.events import make_event
    from shared.settings import PlatformSettings

    with tempfile.TemporaryDirectory() as tmp:
        platform = PlatformSettings(environment="test", data_dir=Path(tmp), outbox_poll_seconds=0.05, log_json=False)
        async with embedded_stack(platform) as stack:
            app = stack.apps["verification"]
            m = parse_methodology(json.loads(METHODOLOGY.read_text()))
            wave_id, draw_id = uuid.uuid4(), uuid.uuid4()
            await stack.bus.publish(make_event(WaveCreated(
                wave_id=wave_id, code="BENCH", name="bench", scope="national", province_code=None, year=2026,
                methodology_version="sipas-2017", fieldwork_start=None, fieldwork_end=None, status="in_field")))
            units = [SampledUnit(unit_id=uuid.uuid4(), stratum="01|x", role="sample", order=i, province_code="01",
                                 commune_code="01001", psu=f"c{i % 50}", ssu=None, pi=0.1, weight=10.0)
                     for i in range(n)]
            chunks = [units[i:i + 1000] for i in range(0, n, 1000)]
            for k, part in enumerate(chunks):
                await stack.bus.publish(make_event(SampleDrawn(
                    wave_id=wave_id, draw_id=draw_id, methodology_version="sipas-2017", sample_hash="0" * 64,
                    chunk=k, chunks=len(chunks),
                    strata=[StratumSummary(stratum="01|x", population=n * 10, n=n, n_reserve=0)] if k == 0 else [],
                    units=part)))
            outbox = app.state.tables["outbox"]

            async def decided() -> int:
                async with app.state.sessions() as session:
                    return await session.scalar(
                        select(func.count()).select_from(outbox).where(outbox.c.type.like("%.response.%"))) or 0

            from services.verification.models import SampleUnit

            while True:  # the sample is in before the clock starts
                async with app.state.sessions() as session:
                    if await session.scalar(select(func.count()).select_from(SampleUnit.__table__)) == n:
                        break
                await asyncio.sleep(0.05)
            answers = _answers(m, n, seed=3)
            events = [make_event(ResponseSubmitted(
                wave_id=wave_id, form_code=f"B{i:07d}", unit_id=u.unit_id, response_id=uuid.uuid4(),
                stratum=u.stratum, province_code="01", commune_code="01001", channel="paper",
                enumerator_id=f"E{i % 30}", methodology_version="sipas-2017", answers=answers[i],
                submitted_at=dt.datetime.now(dt.UTC))) for i, u in enumerate(units)]
            start = time.perf_counter()
            for i in range(0, n, 200):  # as survey's outbox relay hands them over: rounds of 200
                await stack.bus.publish_many(events[i:i + 200])
            while await decided() < n:
                await asyncio.sleep(0.05)
            took = time.perf_counter() - start
    return [Result(f"response.submitted → decision announced, {n:,} responses (SQLite, in-process bus)",
                   n / took, "responses/s", note=f"{took:.1f} s in all")]


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    logging.disable(logging.WARNING)
    n_screen, n_draw, n_e2e = (2_000, 4_000, 200) if args.quick else (40_000, 40_000, 2_000)
    results = bench_screening(n_screen) + bench_draw(n_draw) + asyncio.run(_end_to_end(n_e2e))
    report("Verification: screening, back-check draw, decisions end to end", results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
