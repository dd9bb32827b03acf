"""Values every store and strict JSON parser can hold.

A provider answer is decoded by ``json.loads``, which accepts what neither PostgreSQL nor a strict
JSON parser will take back: ``NaN`` and ``Infinity`` (JSONB refuses them, and so do receivers'
parsers), lone UTF-16 surrogates such as ``"\\ud800"`` (legal JSON, but no UTF-8 encoder can write
them: the database driver raises before the row reaches the server), and NUL characters (PostgreSQL
text refuses ``\\u0000``). :func:`clean` makes such a value storable: non-finite numbers become
``None``, a lone surrogate becomes U+FFFD, NUL characters are dropped, in keys too.
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
