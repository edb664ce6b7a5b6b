"""The settings as an operator sees them, generated from the ``Settings`` model.

``--help`` of each command lists the ``HEIMDALL_*`` variables of the sections it reads, with
default and description (``SettingsCommand``); ``heimdall-stream config`` prints the effective
value of every variable with secrets masked (``effective``).  Both walk the pydantic model, so
a new field shows up in both without anyone editing a list.
"""

from __future__ import annotations

import json
import re
import shlex
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from heimdall_stream.config import Settings

PREFIX = "HEIMDALL_"
GENERAL = "general"
# Every section, in the order they are listed; GENERAL is the top-level fields (instance, logs).
SECTIONS: tuple[str, ...] = (
    GENERAL,
    *(
        name
        for name, field in Settings.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    ),
)
MASK = "****"
# A field, or a key of a passthrough option map, whose value is a credential by its name.
_SECRET_NAME = re.compile(r"password|secret|token|credential|jaas|oauthbearer\.config|\.pem$", re.I)
# Defaults computed where the process runs: described rather than evaluated here.
_COMPUTED = {"instance_id": "<hostname>-<pid>", "workers": "<usable cores>"}


@dataclass(frozen=True)
class SettingDoc:
    """One environment variable of the settings model."""

    section: str
    name: str
    variable: str
    field: FieldInfo


def section_title(section: str) -> str:
    """The heading of a section: its model's docstring (first line)."""
    if section == GENERAL:
        return "general"
    doc = Settings.model_fields[section].description or ""
    line = doc.strip().splitlines()[0].rstrip(".") if doc else ""
    return f"{section}: {line[:1].lower()}{line[1:]}" if line else section


def documented(sections: Sequence[str] = SECTIONS) -> Iterator[SettingDoc]:
    """Every variable of the given sections, in model order."""
    for section in sections:
        if section == GENERAL:
            fields = {n: f for n, f in Settings.model_fields.items() if n not in SECTIONS}
            prefix = PREFIX
        else:
            model = Settings.model_fields[section].annotation
            assert isinstance(model, type) and issubclass(model, BaseModel)
            fields, prefix = model.model_fields, f"{PREFIX}{section.upper()}__"
        for name, field in fields.items():
            yield SettingDoc(section, name, f"{prefix}{name.upper()}", field)


def is_secret(name: str, field: FieldInfo) -> bool:
    """Whether a field holds a credential: typed SecretStr, or named like one."""
    annotation = field.annotation
    types = typing.get_args(annotation) or (annotation,)
    return SecretStr in types or bool(_SECRET_NAME.search(name))


def default_text(doc: SettingDoc) -> str:
    """The default as shown in ``--help`` (home directory as ~, unset for None)."""
    if doc.name in _COMPUTED:
        return _COMPUTED[doc.name]
    field = doc.field
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    else:
        return "required"
    if isinstance(value, Path) and value.is_relative_to(Path.home()):
        return str(Path("~") / value.relative_to(Path.home()))
    return "" if value is None else value_text(_plain(value))


def value_text(value: Any) -> str:
    """A value as an environment variable spells it (booleans as true/false, maps as JSON)."""
    return value if isinstance(value, str) else json.dumps(value)


def _plain(value: Any) -> Any:
    """A JSON-ready value: str, number, bool, dict or None (paths as strings)."""
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, dict):
        return dict(value)
    return str(value)


def _masked(name: str, field: FieldInfo, value: Any) -> Any:
    """The value with credentials replaced by ``MASK``: the field, option keys, URL passwords."""
    if value is None:
        return None
    if is_secret(name, field):
        return MASK
    if isinstance(value, dict):
        return {k: MASK if _SECRET_NAME.search(k) else v for k, v in value.items()}
    if isinstance(value, str) and "@" in value and "://" in value:
        parts = urlsplit(value)
        if parts.password:
            user = parts.username or ""
            host = parts.netloc.rsplit("@", 1)[1]
            return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))
    return value


def effective(settings: Settings) -> dict[str, Any]:
    """Every variable and the value in force (environment or default), secrets masked."""
    values: dict[str, Any] = {}
    for doc in documented():
        owner: Any = settings if doc.section == GENERAL else getattr(settings, doc.section)
        value = _plain(getattr(owner, doc.name))
        values[doc.variable] = _masked(doc.name, doc.field, value)
    return values


def env_lines(values: dict[str, Any]) -> Iterator[str]:
    """``HEIMDALL_X=value`` lines (shell-quoted where needed); an unset one as a comment."""
    for variable, value in values.items():
        if value is None:
            yield f"# {variable} is unset"
        else:
            yield f"{variable}={shlex.quote(value_text(value))}"


class SettingsCommand(click.Command):
    """A command whose ``--help`` ends with the ``HEIMDALL_*`` variables it reads.

    ``reads`` names the sections (``SECTIONS``): each is listed with the variable, its
    description and its default.
    """

    def __init__(self, *args: Any, reads: Sequence[str] = (), **kwargs: Any) -> None:
        unknown = set(reads) - set(SECTIONS)
        if unknown:
            raise ValueError(f"unknown settings sections {sorted(unknown)}; known: {SECTIONS}")
        super().__init__(*args, **kwargs)
        self.reads = tuple(reads)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The epilog, then the variables of each section read: VARIABLE=default, description."""
        super().format_epilog(ctx, formatter)
        if not self.reads:
            return
        formatter.write_paragraph()
        formatter.write_text(
            "Settings read, as environment variables with their defaults (`heimdall-stream "
            "config` shows the values in force):"
        )
        for section in self.reads:
            with formatter.section(section_title(section)):
                for doc in documented((section,)):
                    default = default_text(doc)
                    shown = f"{doc.variable}={default}" if default else f"{doc.variable} (unset)"
                    formatter.write_text(shown)
                    with formatter.indentation():
                        formatter.write_text(doc.field.description or "")
