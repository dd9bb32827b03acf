"""``jobtracker settings``: every setting, its value here, its default and what it means.

Secrets show only whether they are set; URLs have their password hidden. ``--markdown`` prints
the README's table (from the declarations alone, whatever the environment). Loads neither the
database nor SQLAlchemy: it answers "what is this process configured with?" in a blink.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from worker.errors import ConfigError
from worker.settings import Settings, redact_url
from worker.settings.declare import Setting, as_text, declared
from worker.settings.parse import bounds

#: Where the README's table starts and ends (tests/unit/test_settings.py compares it).
README_BEGIN = "<!-- settings table: `jobtracker settings --markdown` -->"
README_END = "<!-- end of the settings table -->"

UNSET = "\N{EN DASH}"


@click.command("settings")
@click.option("--json", "as_json", is_flag=True, help="A JSON list: one object per variable.")
@click.option("--markdown", is_flag=True, help="The README's table of every setting.")
def settings(as_json: bool, markdown: bool) -> None:
    """Show every setting: its variable, its value here, its default and what it means."""
    if markdown:
        click.echo(markdown_table(), nl=False)
        return
    try:
        current = Settings.from_env()
    except ConfigError as exc:
        click.echo(f"jobtracker: {exc}", err=True)
        sys.exit(2)
    rows = describe(current, os.environ, Path.cwd())
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False, default=str))
    else:
        width = max(len(row["variable"]) for row in rows)
        for row in rows:
            click.echo(f"{row['variable']:<{width}}  {_text_line(row)}")
            click.echo(f"{'':<{width}}    {row['doc']}")
    unknown = sorted(set(_ours(os.environ)) - {row["variable"] for row in rows})
    if unknown:
        click.echo(f"jobtracker: not settings, ignored: {', '.join(unknown)}", err=True)


def describe(current: Settings, environ: Mapping[str, str], cwd: Path) -> list[dict[str, Any]]:
    """One row per variable (a family's: per member), with its value as shown."""
    rows = []
    for s in declared(Settings):
        value = getattr(current, s.field)
        for member, variable in s.variables(environ):
            here = value[member] if s.per else value
            default = s.default_value(cwd, member)
            rows.append(
                {
                    "variable": variable,
                    "value": _shown(s, here),
                    "default": None if s.secret else _plain(default),
                    "is_default": here == default,
                    "doc": s.doc,
                    "allowed": _allowed(s) or None,
                    "secret": s.secret,
                }
            )
    return rows


def markdown_table() -> str:
    """The README's table: one row per setting, one per family."""
    lines = ["| variable | meaning | default | allowed |", "|---|---|---|---|"]
    for s in declared(Settings):
        meaning = s.doc
        if s.per:
            meaning += "; one for each " + ", ".join(f"`<{m.placeholder}>`, {m.doc}" for m in s.per)
        cells = (f"`{s.pattern}`", meaning, _default_doc(s), _allowed(s, code=True))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _default_doc(s: Setting) -> str:
    if s.default_for is not None:
        shown = ", ".join(
            f"`{_member(member)}`: `{as_text(s.default_value(Path('.'), member))}`"
            for member, _ in s.variables({})
        )
    else:
        text = as_text(s.default_value(Path(".")))
        shown = f"`{text}`" if text else UNSET
    return f"{shown} ({s.unset})" if s.unset else shown


def _member(member: str | tuple[str, ...]) -> str:
    """A member as its variable spells it: ``VIDEO_FACE_FUSION``, ``MAIN/IMAGE_ANIMATE``."""
    return "/".join(member).upper() if isinstance(member, tuple) else member.upper()


def _allowed(s: Setting, *, code: bool = False) -> str:
    quote = "`" if code else ""
    if s.choices:
        return ", ".join(f"{quote}{c}{quote}" for c in s.choices)
    if isinstance(s.default, bool):
        return f"{quote}true{quote} or {quote}false{quote}"
    if s.minimum is not None or s.maximum is not None:
        return bounds(s.minimum, s.maximum)
    return ""


def _shown(s: Setting, value: Any) -> Any:
    if s.secret:
        return "set" if value else None
    if s.url and isinstance(value, str):
        return redact_url(value)
    return _plain(value)


def _plain(value: Any) -> Any:
    """A value as JSON holds it."""
    if isinstance(value, tuple):
        return list(value)
    return str(value) if isinstance(value, Path) else value


def _text_line(row: Mapping[str, Any]) -> str:
    value = row["value"]
    shown = UNSET if value is None or value == [] else as_text(value)
    if row["secret"]:
        return shown
    if row["is_default"]:
        return f"{shown}  (default)"
    default = as_text(row["default"]) or UNSET
    return f"{shown}  (default: {default})"


def _ours(environ: Mapping[str, str]) -> list[str]:
    """Set variables that look like settings (tests' own ``JOBTRACKER_TEST_*`` aside)."""
    return [
        name
        for name, value in environ.items()
        if name.startswith("JOBTRACKER_")
        and not name.startswith("JOBTRACKER_TEST_")
        and value.strip()
    ]
