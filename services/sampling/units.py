"""Administrative units (đơn vị hành chính) as data with validity dates, and the old→new crosswalk.

The current map (34 provinces, 3,321 communes, two tiers, valid from 1 July 2025) is seeded at
start-up from the ``vietnam-provinces`` package under the unit set ``vn-2025``; seeding inserts
with ON CONFLICT DO NOTHING, so every start (and several replicas starting at once) leaves the
same rows. Older maps (63 provinces with districts) are imported through the API as other unit
sets; a wave names the set its frames are checked against, and the crosswalk maps old codes to
new ones for trends across the 2025 merger.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from dataclasses import dataclass

from sqlalchemy import and_, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from services.sampling.models import admin_unit, unit_crosswalk

CURRENT_SET = "vn-2025"
CURRENT_VALID_FROM = dt.date(2025, 7, 1)
LEVELS = ("province", "district", "commune")


def insert_for(session: AsyncSession, table):
    """An INSERT that can take ON CONFLICT DO NOTHING on both backends."""
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def package_units() -> list[dict]:
    """The 2025 map from the ``vietnam-provinces`` package, as admin_unit rows (GSO codes,
    provinces two digits, communes five)."""
    from vietnam_provinces import Province, Ward

    rows: list[dict] = []
    for p in Province.iter_all():
        code = f"{int(p.code):02d}"
        rows.append(dict(unit_set=CURRENT_SET, level="province", code=code, name=nfc(p.name), parent_code=None,
                         province_code=code, valid_from=CURRENT_VALID_FROM, valid_to=None))
    for w in Ward.iter_all():
        province = f"{int(w.province_code):02d}"
        rows.append(dict(unit_set=CURRENT_SET, level="commune", code=f"{int(w.code):05d}", name=nfc(w.name),
                         parent_code=province, province_code=province, valid_from=CURRENT_VALID_FROM,
                         valid_to=None))
    return rows


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


async def upsert_units(session: AsyncSession, rows: list[dict]) -> int:
    """Insert units, keeping existing ones (same set, level and code); returns how many were new."""
    added = 0
    for start in range(0, len(rows), 1000):
        chunk = rows[start : start + 1000]
        stmt = insert_for(session, admin_unit).on_conflict_do_nothing(index_elements=["unit_set", "level", "code"])
        before = await session.scalar(select(func.count()).select_from(admin_unit))
        await session.execute(stmt, chunk)
        added += (await session.scalar(select(func.count()).select_from(admin_unit))) - before
    return added


async def seed_current(app) -> None:
    """Start-up hook: make sure the current map is present (idempotent)."""
    async with app.state.sessions() as session, session.begin():
        have = await session.scalar(
            select(func.count()).select_from(admin_unit).where(admin_unit.c.unit_set == CURRENT_SET)
        )
        rows = package_units()
        if have != len(rows):
            await upsert_units(session, rows)


@dataclass
class UnitIndex:
    """The units of one set, for checking frame records (loaded once per request or upload)."""

    unit_set: str
    provinces: set[str]
    commune_province: dict[str, str]

    def problem(self, province_code: str, commune_code: str | None) -> str | None:
        if province_code not in self.provinces:
            return f"unknown province {province_code!r} in unit set {self.unit_set}"
        if commune_code is not None:
            owner = self.commune_province.get(commune_code)
            if owner is None:
                return f"unknown commune {commune_code!r} in unit set {self.unit_set}"
            if owner != province_code:
                return f"commune {commune_code!r} belongs to province {owner}, not {province_code}"
        return None


async def load_index(session: AsyncSession, unit_set: str) -> UnitIndex:
    rows = (
        await session.execute(
            select(admin_unit.c.level, admin_unit.c.code, admin_unit.c.province_code).where(
                admin_unit.c.unit_set == unit_set, admin_unit.c.level.in_(("province", "commune"))
            )
        )
    ).all()
    provinces = {code for level, code, _ in rows if level == "province"}
    communes = {code: prov for level, code, prov in rows if level == "commune"}
    return UnitIndex(unit_set, provinces, communes)


async def list_units(
    session: AsyncSession, unit_set: str, level: str | None, province_code: str | None, limit: int, offset: int
) -> tuple[list[dict], int]:
    cond = [admin_unit.c.unit_set == unit_set]
    if level:
        cond.append(admin_unit.c.level == level)
    if province_code:
        cond.append(admin_unit.c.province_code == province_code)
    where = and_(*cond)
    total = await session.scalar(select(func.count()).select_from(admin_unit).where(where))
    rows = await session.execute(
        select(admin_unit).where(where).order_by(admin_unit.c.level, admin_unit.c.code).limit(limit).offset(offset)
    )
    return [dict(r) for r in rows.mappings()], total or 0


async def unit_sets(session: AsyncSession) -> list[dict]:
    rows = await session.execute(
        select(admin_unit.c.unit_set, admin_unit.c.level, func.count())
        .group_by(admin_unit.c.unit_set, admin_unit.c.level)
        .order_by(admin_unit.c.unit_set, admin_unit.c.level)
    )
    sets: dict[str, dict[str, int]] = {}
    for unit_set, level, count in rows.all():
        sets.setdefault(unit_set, {})[level] = count
    return [{"unit_set": k, "counts": v} for k, v in sets.items()]


async def add_crosswalk(session: AsyncSession, links: list[dict]) -> int:
    if not links:
        return 0
    before = await session.scalar(select(func.count()).select_from(unit_crosswalk))
    stmt = insert_for(session, unit_crosswalk).on_conflict_do_nothing(
        index_elements=["from_set", "from_level", "from_code", "to_set", "to_level", "to_code"]
    )
    for start in range(0, len(links), 1000):
        await session.execute(stmt, links[start : start + 1000])
    return (await session.scalar(select(func.count()).select_from(unit_crosswalk))) - before


async def crosswalk(
    session: AsyncSession, from_set: str, to_set: str, from_code: str | None, limit: int, offset: int
) -> tuple[list[dict], int]:
    cond = [unit_crosswalk.c.from_set == from_set, unit_crosswalk.c.to_set == to_set]
    if from_code:
        cond.append(unit_crosswalk.c.from_code == from_code)
    where = and_(*cond)
    total = await session.scalar(select(func.count()).select_from(unit_crosswalk).where(where))
    rows = await session.execute(
        select(unit_crosswalk)
        .where(where)
        .order_by(unit_crosswalk.c.from_level, unit_crosswalk.c.from_code, unit_crosswalk.c.to_code)
        .limit(limit)
        .offset(offset)
    )
    return [dict(r) for r in rows.mappings()], total or 0
