"""API keys carrying a role, and the object-level checks that go with them.

Roles: ``ministry`` (Bộ Nội vụ: everything), ``province`` (a Sở Nội vụ, scoped to one province
code), ``observer`` (Fatherland Front / Veterans' Association: read-only audit), ``vnpost``
(Vietnam Post's systems), ``portal`` (a provincial public-service portal, scoped to its province;
also dashboards and the CCHC portal subscribing to releases).

A key is ``sipas_<prefix>_<secret>``: the prefix finds the row, the SHA-256 of the whole key is
compared in constant time. The secret has 256 bits of entropy, so a fast hash is enough (a slow
password hash defends guessable secrets; these are not guessable) and keeps per-request auth
cheap. The key itself is shown once, when issued, and never stored.

Keys are issued into every service's database by ``python -m services keys issue`` (each service
owns its data; none reads another's tables).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader
from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import utcnow
from shared.errors import Forbidden, NotFound, Unauthorized


class Role(StrEnum):
    ministry = "ministry"
    province = "province"
    observer = "observer"
    vnpost = "vnpost"
    portal = "portal"
    # Another SIPAS service calling on its own behalf (X-Internal-Token); never issued as a key.
    service = "service"


SCOPED_ROLES = {Role.province, Role.portal}
KEY_HEADER = "X-API-Key"
INTERNAL_HEADER = "X-Internal-Token"


@dataclass(frozen=True)
class Principal:
    """Who is calling. ``label`` names the organisation (never a person)."""

    key_id: str
    role: Role
    label: str
    province_code: str | None = None

    @property
    def actor(self) -> str:
        return f"{self.role.value}:{self.label}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _split(key: str) -> str | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "sipas" or len(parts[1]) != 12:
        return None
    return parts[1]


@dataclass(frozen=True)
class IssuedKey:
    key: str
    id: str
    prefix: str
    role: Role
    province_code: str | None
    label: str


def new_key(role: Role, label: str, province_code: str | None = None) -> IssuedKey:
    if role == Role.service:
        raise ValueError("service principals use the internal token, not issued keys")
    if role in SCOPED_ROLES and not province_code:
        raise ValueError(f"a {role.value} key needs a province code")
    if role not in SCOPED_ROLES and province_code:
        raise ValueError(f"a {role.value} key is not scoped to a province")
    prefix = secrets.token_hex(6)
    key = f"sipas_{prefix}_{secrets.token_urlsafe(32)}"
    return IssuedKey(key, str(uuid.uuid4()), prefix, role, province_code, label)


async def store_key(session: AsyncSession, table: Table, issued: IssuedKey) -> None:
    await session.execute(
        table.insert().values(
            id=issued.id,
            prefix=issued.prefix,
            key_hash=hash_key(issued.key),
            role=issued.role.value,
            province_code=issued.province_code,
            label=issued.label,
            created_at=utcnow(),
        )
    )


async def revoke_key(session: AsyncSession, table: Table, prefix: str) -> bool:
    result = await session.execute(
        update(table).where(table.c.prefix == prefix, table.c.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return result.rowcount > 0


async def lookup_key(session: AsyncSession, table: Table, key: str) -> Principal | None:
    prefix = _split(key)
    if prefix is None:
        return None
    row = (await session.execute(select(table).where(table.c.prefix == prefix))).mappings().first()
    if row is None or row["revoked_at"] is not None:
        return None
    if not hmac.compare_digest(row["key_hash"], hash_key(key)):
        return None
    return Principal(row["id"], Role(row["role"]), row["label"], row["province_code"])


_key_header = APIKeyHeader(name=KEY_HEADER, auto_error=False, description="API key issued by the ministry")


async def optional_principal(request: Request, key: Annotated[str | None, Depends(_key_header)]) -> Principal | None:
    internal = request.headers.get(INTERNAL_HEADER)
    if internal is not None:
        expected = request.app.state.settings.platform.internal_token
        if hmac.compare_digest(internal.encode(), expected.encode()):
            return Principal("internal", Role.service, "sipas-internal")
        raise Unauthorized("The internal token is wrong.", headers={"WWW-Authenticate": "ApiKey"})
    if not key:
        return None
    sessions = request.app.state.sessions
    async with sessions() as session:
        principal = await lookup_key(session, request.app.state.tables["api_key"], key)
    if principal is None:
        raise Unauthorized("The API key is unknown or revoked.", headers={"WWW-Authenticate": "ApiKey"})
    return principal


async def current_principal(principal: Annotated[Principal | None, Depends(optional_principal)]) -> Principal:
    if principal is None:
        raise Unauthorized(f"Send an API key in the {KEY_HEADER} header.", headers={"WWW-Authenticate": "ApiKey"})
    return principal


def require_roles(*roles: Role):
    """Dependency: the caller must hold one of ``roles``."""

    async def check(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        # Services calling each other are trusted with every read and write they make.
        if principal.role not in roles and principal.role != Role.service:
            allowed = ", ".join(r.value for r in roles)
            raise Forbidden(f"This operation needs one of the roles: {allowed}.")
        return principal

    return check


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
OptionalPrincipal = Annotated[Principal | None, Depends(optional_principal)]


def can_see_province(principal: Principal, province_code: str | None) -> bool:
    """Province-scoped keys see only their own province; national objects (None) are readable
    by everyone allowed on the route."""
    if principal.role not in SCOPED_ROLES:
        return True
    return province_code is None or province_code == principal.province_code


def ensure_province_visible(principal: Principal, province_code: str | None, what: str = "resource") -> None:
    """Object-level check. Another province's object answers 404, not 403, so a key cannot
    learn which objects exist elsewhere."""
    if not can_see_province(principal, province_code):
        raise NotFound(f"No such {what}.")


def ensure_province_writable(principal: Principal, province_code: str | None, what: str = "resource") -> None:
    """Writes by scoped keys must target their own province; national objects need ministry."""
    if principal.role in SCOPED_ROLES and province_code != principal.province_code:
        if province_code is None:
            raise Forbidden(f"Only the ministry may change a national {what}.")
        raise NotFound(f"No such {what}.")
