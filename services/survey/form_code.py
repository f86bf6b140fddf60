"""Form codes (mã phiếu): the printable, typeable code on each questionnaire.

Format: ``<wave prefix>-<serial>-<check>``, e.g. ``S26-22H7K-2``.

- Every character comes from a 32-character alphabet without the look-alikes 0/O and 1/I:
  ``23456789ABCDEFGHJKLMNPQRSTUVWXYZ``. Upper case letters, digits and ``-`` are all in the QR
  alphanumeric mode, so the code (and an upper-case URL around it) packs densely into a QR code.
- The wave prefix is 2-4 characters of that alphabet chosen per wave (``S26``, ``BD26``).
- The serial is 5 characters, base 32 over the alphabet, most significant first
  (0 .. 32**5 - 1 = 33,554,431).
- The check character is computed over prefix and serial with the **Damm algorithm** over the
  quasigroup ``x * y = 2x XOR y`` of the field GF(32) = GF(2)[t]/(t^5 + t^2 + 1): starting
  from 0, fold every character's value through the quasigroup; the check character is the one
  that brings the fold back to 0, and a code is valid when folding all its characters gives 0.

Why Damm: a quasigroup makes every single-character substitution change the result, and
total anti-symmetry ((c*x)*y = (c*y)*x only if x = y; here (2+1)(x+y) = 0 only if x = y) makes
every adjacent transposition change it, including a swap of the last serial character with the
check character. It needs no extra symbol outside the alphabet (ISO 7064 MOD 37-36 would need
the 36-character alphabet with 0/O/1/I; MOD 11-2 needs "X"), and Luhn mod N misses some
transpositions. Because the quasigroup is linear it also catches every twin error (aa -> bb) and
every jump transposition (abc -> cba). It does not catch all insertions, deletions or double
substitutions (no single check character can).

A check character guards against typing mistakes, not guessing: whoever knows this module can make
a valid code for any serial. For the online channel the collection service must give serials
that are not sequential, or add a secret token to the QR payload (``qr_payload(..., token=)``),
and rate-limit failed attempts.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlsplit

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
BASE = len(ALPHABET)  # 32
SERIAL_LENGTH = 5
MAX_SERIAL = BASE**SERIAL_LENGTH - 1
PREFIX_MIN, PREFIX_MAX = 2, 4

_VALUE = {ch: i for i, ch in enumerate(ALPHABET)}
_POLY = 0b100101  # t^5 + t^2 + 1, primitive over GF(2)
# Separators people type or that word processors substitute: hyphens, dashes, minus, underscore.
_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015\u2212_]+")

assert BASE == 32 and len(set(ALPHABET)) == BASE and not set("0O1I") & set(ALPHABET)


def _double(x: int) -> int:
    """Multiply by t (the element 2) in GF(32)."""
    x <<= 1
    return x ^ _POLY if x & 0b100000 else x


def damm_op(x: int, y: int) -> int:
    """The totally anti-symmetric quasigroup operation: x * y = 2x + y in GF(32)."""
    return _double(x) ^ y


def _fold(body: str) -> int:
    interim = 0
    for ch in body:
        interim = damm_op(interim, _VALUE[ch])
    return interim


def check_character(body: str) -> str:
    """The check character for ``body`` (prefix + serial, characters of ALPHABET)."""
    # The c with damm_op(interim, c) == 0 is c = 2 * interim.
    return ALPHABET[_double(_fold(body))]


def _encode_serial(serial: int) -> str:
    chars = []
    for _ in range(SERIAL_LENGTH):
        serial, digit = divmod(serial, BASE)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


def _decode_serial(text: str) -> int:
    value = 0
    for ch in text:
        value = value * BASE + _VALUE[ch]
    return value


def _normalise(code: str) -> str:
    return _SEPARATORS.sub("", unicodedata.normalize("NFKC", code)).upper()


def _check_prefix(prefix: str) -> str:
    p = _normalise(prefix)
    if not PREFIX_MIN <= len(p) <= PREFIX_MAX or any(ch not in _VALUE for ch in p):
        raise ValueError(
            f"wave prefix must be {PREFIX_MIN}-{PREFIX_MAX} characters of {ALPHABET} "
            f"(no 0, O, 1 or I), got {prefix!r}"
        )
    return p


def make_form_code(wave_prefix: str, serial: int) -> str:
    """The canonical form code for ``serial`` in the wave with ``wave_prefix``."""
    prefix = _check_prefix(wave_prefix)
    if isinstance(serial, bool) or not isinstance(serial, int) or not 0 <= serial <= MAX_SERIAL:
        raise ValueError(f"serial must be an integer 0..{MAX_SERIAL}, got {serial!r}")
    body = prefix + _encode_serial(serial)
    return f"{prefix}-{body[len(prefix):]}-{check_character(body)}"


@dataclass(frozen=True, slots=True)
class FormCodeCheck:
    """Result of ``validate_form_code``. ``code`` is the canonical form when well formed."""

    status: Literal["ok", "malformed", "bad_check_digit"]
    code: str | None = None
    wave_prefix: str | None = None
    serial: int | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def validate_form_code(code: str) -> FormCodeCheck:
    """Check a code as a person typed or a scanner read it.

    Case, spaces, hyphens (and dash look-alikes, underscores, full-width characters) are
    normalised away, so ``"s26 22h7k 2"`` is read as ``S26-22H7K-2``. Never raises.
    """
    if not isinstance(code, str):
        return FormCodeCheck("malformed", message="a form code is text")
    body = _normalise(code)
    bad = sorted({ch for ch in body if ch not in _VALUE})
    if bad:
        hint = " (0, O, 1 and I are never used)" if set(bad) & set("0O1I") else ""
        return FormCodeCheck("malformed", message=f"characters not used in form codes: {''.join(bad)}{hint}")
    n_prefix = len(body) - SERIAL_LENGTH - 1
    if not PREFIX_MIN <= n_prefix <= PREFIX_MAX:
        lo, hi = PREFIX_MIN + SERIAL_LENGTH + 1, PREFIX_MAX + SERIAL_LENGTH + 1
        return FormCodeCheck("malformed", message=f"a form code has {lo}-{hi} characters, got {len(body)}")
    prefix, serial_text, check = body[:n_prefix], body[n_prefix:-1], body[-1]
    canonical = f"{prefix}-{serial_text}-{check}"
    if _fold(body) != 0:
        return FormCodeCheck(
            "bad_check_digit", code=canonical, message="check character does not match: a character is mistyped"
        )
    return FormCodeCheck("ok", code=canonical, wave_prefix=prefix, serial=_decode_serial(serial_text))


def qr_payload(code: str, base_url: str, *, token: str | None = None) -> str:
    """URL printed as a QR code on the form for the online channel: ``<base_url>/<code>``,
    plus ``?t=<token>`` when a per-form secret is given. Raises ValueError on an invalid code or a
    base URL that is not http(s) or carries a query or fragment."""
    result = validate_form_code(code)
    if not result.ok:
        raise ValueError(f"invalid form code {code!r}: {result.message}")
    parts = urlsplit(base_url)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"base_url must be an http(s) URL without query or fragment, got {base_url!r}")
    url = f"{base_url.rstrip('/')}/{result.code}"
    if token is not None:
        url += f"?t={quote(token, safe='')}"
    return url
