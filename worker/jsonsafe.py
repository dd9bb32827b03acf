"""Values every store and strict JSON parser can hold.

A provider answer is decoded by ``json.loads``, which accepts what neither PostgreSQL nor a strict
JSON parser will take back: ``NaN`` and ``Infinity`` (JSONB refuses them, and so do receivers'
parsers), lone UTF-16 surrogates such as ``"\\ud800"`` (legal JSON, but no UTF-8 encoder can write
them: the database driver raises before the row reaches the server), and NUL characters (PostgreSQL
text refuses ``\\u0000``). :func:`clean` makes such a value storable: non-finite numbers become
``None``, a lone surrogate becomes U+FFFD, NUL characters are dropped, in keys too. What a caller
sends is refused instead (:func:`unstorable` says why): it must be stored as it was sent.
"""

from __future__ import annotations

import math
import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` without NUL characters, with each lone surrogate replaced by U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    if _SURROGATE.search(text):
        text = _SURROGATE.sub("\ufffd", text)
    return text


def unstorable(text: str) -> str | None:
    """Why ``text`` cannot be stored as it is (a NUL, a lone surrogate), or None when it can.

    For input a caller sends, which is refused rather than cleaned: what it asked to store must be
    what is stored."""
    if "\x00" in text:
        return "a NUL character (\\u0000), which the database cannot store"
    found = _SURROGATE.search(text)
    if found:
        return f"a lone UTF-16 surrogate (\\u{ord(found.group()):04x}), which is not Unicode text"
    return None


def clean(value: Any) -> Any:
    """``value`` (decoded JSON) with every string cleaned and every non-finite number ``None``.

    Raises RecursionError for absurdly deep nesting, like ``json.loads`` itself.
    """
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {clean_text(str(k)): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def finite_float(text: str) -> float | None:
    """``json.loads`` ``parse_float`` hook: ``1e999`` would be ``inf``; it is ``None``."""
    number = float(text)
    return number if math.isfinite(number) else None


def no_constant(_name: str) -> None:
    """``json.loads`` ``parse_constant`` hook: ``NaN``, ``Infinity``, ``-Infinity`` are ``None``."""
    return None
