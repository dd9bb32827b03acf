"""How a setting is declared: once, on its field of :class:`~worker.settings.Settings`.

:func:`setting` returns a dataclass field that also carries the variable's name, its default,
its bounds (or choices) and one line of doc. Everything else derives from those declarations:
reading and checking the environment (:func:`read`), the defaults the policies start from (a
field's default is the class attribute ``Settings.<field>``), ``jobtracker settings``, and the
README's table (``jobtracker settings --markdown``; a test fails when the two differ).

A *family* is one declaration for a variable per member: ``JOBTRACKER_{KIND}_QPS`` with
``per=KINDS`` is read once per kind of the provider table into ``{kind: value}``. Members are
whatever :attr:`Members.names` returns for the environment: a fixed list (the table's kinds), or
names found in it (``JOBTRACKER_ACCOUNT_<NAME>_SECRET_ID`` for each account). A variable may vary
in several parts (``JOBTRACKER_ACCOUNT_{NAME}_QPS_{KIND}``, ``per=(ACCOUNTS, KINDS)``); it is then
keyed by ``(name, kind)``.
"""

from __future__ import annotations

import dataclasses
import itertools
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from worker.settings import parse
from worker.settings.parse import Raw

#: Text of one variable -> its value, or a ConfigError naming the variable.
Parse = Callable[[Raw], Any]

#: The key of a declared field's metadata.
_KEY = "jobtracker.setting"


@dataclass(frozen=True)
class Members:
    """Who a family has a variable for.

    ``placeholder`` is the part of the variable's name that varies (``KIND`` in
    ``JOBTRACKER_{KIND}_QPS``; a member's name is written there in capitals). ``names`` gives
    the members for an environment: a fixed list, or the names its variables use.
    """

    placeholder: str
    #: What a member is, for the docs: "a kind of the provider table: ...".
    doc: str
    names: Callable[[Mapping[str, str]], tuple[str, ...]]


@dataclass(frozen=True)
class Setting:
    """One declared variable, or one family of them, and the settings field it fills."""

    #: The variable; a family's names its varying parts: ``JOBTRACKER_{KIND}_QPS``.
    env: str
    #: One line: what it means, for ``jobtracker settings`` and the README.
    doc: str
    parse: Parse
    default: Any = None
    #: A default that depends on the working directory (a SQLite file in it).
    default_in: Callable[[Path], Any] | None = None
    #: A family's default per member (each provider's own endpoint).
    default_for: Callable[[Any], Any] | None = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    #: Never shown anywhere: ``jobtracker settings`` only says whether it is set.
    secret: bool = False
    #: A URL, shown with its password hidden.
    url: bool = False
    #: What leaving it unset means, where the default does not say it (``not archived``).
    unset: str | None = None
    per: tuple[Members, ...] = ()
    #: The field of the settings object it fills (filled in by :func:`declared`).
    field: str = ""

    @property
    def pattern(self) -> str:
        """The variable as documented: ``JOBTRACKER_<KIND>_QPS``."""
        return self.env.format(**{m.placeholder: f"<{m.placeholder}>" for m in self.per})

    def variables(self, environ: Mapping[str, str]) -> list[tuple[Any, str]]:
        """``(member, variable)`` for each member of a family; ``[(None, env)]`` otherwise."""
        if not self.per:
            return [(None, self.env)]
        found = []
        for names in itertools.product(*(m.names(environ) for m in self.per)):
            parts = {m.placeholder: name.upper() for m, name in zip(self.per, names, strict=True)}
            found.append((names[0] if len(names) == 1 else names, self.env.format(**parts)))
        return found

    def default_value(self, cwd: Path, member: Any = None) -> Any:
        if self.default_in is not None:
            return self.default_in(cwd)
        if self.default_for is not None:
            return self.default_for(member)
        return self.default

    def read(self, environ: Mapping[str, str], cwd: Path) -> Any:
        """The value (a family's: ``{member: value}``) the environment gives this field."""
        values = {}
        for member, name in self.variables(environ):
            text = environ.get(name, "").strip()
            values[member] = (
                self.parse(Raw(name, text, cwd)) if text else self.default_value(cwd, member)
            )
        return values if self.per else values[None]


def setting(
    env: str,
    default: Any = None,
    *,
    doc: str,
    parse: Parse | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] = (),
    default_in: Callable[[Path], Any] | None = None,
    default_for: Callable[[Any], Any] | None = None,
    per: Members | tuple[Members, ...] = (),
    secret: bool = False,
    url: bool = False,
    unset: str | None = None,
) -> Any:
    """A field of the settings object, declared with its variable.

    Without ``parse``, the default's type says how the text is read: a flag (``bool``), a whole
    number (``int``) or a number (``float``) within ``minimum`` and ``maximum``, one of
    ``choices``, or the text itself. A field whose default depends on where it is read (the
    working directory, a family's members) has none of its own in the constructor.
    """
    families = per if isinstance(per, tuple) else (per,)
    varying = {name for _, name, _, _ in string.Formatter().parse(env) if name}
    if varying != {m.placeholder for m in families}:
        raise ValueError(f"{env}: its varying parts are not those of its families")
    declared = Setting(
        env=env,
        doc=doc,
        parse=parse or _parser_for(default, minimum, maximum, choices),
        default=default,
        default_in=default_in,
        default_for=default_for,
        minimum=minimum,
        maximum=maximum,
        choices=choices,
        secret=secret,
        url=url,
        unset=unset,
        per=families,
    )
    metadata = {_KEY: declared}
    if default_in is not None or families:
        return dataclasses.field(repr=not secret, metadata=metadata)
    return dataclasses.field(default=default, repr=not secret, metadata=metadata)


def _parser_for(
    default: Any, minimum: float | None, maximum: float | None, choices: tuple[str, ...]
) -> Parse:
    if choices:
        return partial(parse.choice, choices=choices)
    if isinstance(default, bool):
        return parse.flag
    if isinstance(default, int | float):
        integer = isinstance(default, int)
        return partial(parse.number, integer=integer, minimum=minimum, maximum=maximum)
    return parse.text


def declared(cls: type) -> tuple[Setting, ...]:
    """The declared settings of a settings class, in the order of its fields."""
    return tuple(
        dataclasses.replace(f.metadata[_KEY], field=f.name)
        for f in dataclasses.fields(cls)
        if _KEY in f.metadata
    )


def read(cls: type, environ: Mapping[str, str], cwd: Path) -> dict[str, Any]:
    """Every declared field's value from the environment, each checked on its own."""
    return {s.field: s.read(environ, cwd) for s in declared(cls)}


def as_text(value: Any) -> str:
    """The text that, set as the variable, reads back as ``value`` ("" for unset)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple | list):
        return ",".join(as_text(v) for v in value)
    if isinstance(value, bytes):
        return value.decode()
    return str(value)
