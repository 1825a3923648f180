"""A command's options declared once, as a pydantic model; its argparse parser is derived.

Each field is a flag (``work_dir``: ``--work-dir``) whose type, default, choices and help come
from the field, so the typed options and the parser cannot drift apart. A default that a
``CTL_*`` variable sets is named, not copied (``option(setting="work_dir")``), so flag and
environment agree. Bounds (``ge=1``, ...) fail like any argparse error. Not pydantic-settings'
own CLI: it spells flags ``--work_dir``, takes JSON lists and its errors are no argparse exits.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from runtime.config import RuntimeSettings


def option(default: Any = ..., help: str = "", **extra: Any) -> Any:
    """A field and its flag: ``help``; ``setting``: the settings attribute that is its default;
    ``flag``: another spelling; ``choices``, ``metavar``; ``positional``; or pydantic bounds."""
    bounds = {k: extra.pop(k) for k in ("ge", "gt", "le", "lt") if k in extra}
    return Field(default, description=help, json_schema_extra=extra, **bounds)


def _extra(field: FieldInfo | None) -> dict[str, Any]:
    extra = field.json_schema_extra if field is not None else None
    return extra if isinstance(extra, dict) else {}


def _flag(name: str, field: FieldInfo | None) -> str:
    return _extra(field).get("flag") or "--" + name.replace("_", "-")


def _split(text: str) -> tuple[str, ...]:
    return tuple(v for v in text.split(",") if v)


def _argument(name: str, field: FieldInfo, default: Any) -> tuple[str, dict[str, Any]]:
    """The ``add_argument`` call of one field: its name or flag, and keywords."""
    extra, kind = _extra(field), field.annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    kw: dict[str, Any] = {"help": (field.description or "").replace("%", "%%")}
    kw |= {k: extra[k] for k in ("choices", "metavar") if extra.get(k) is not None}
    if kind is bool:
        kw["action"] = argparse.BooleanOptionalAction if default else "store_true"
    elif typing.get_origin(kind) is tuple:  # comma-separated (argparse splits a str default)
        kw["type"], default = _split, ",".join(default) if isinstance(default, tuple) else default
    elif typing.get_origin(kind) is list:
        kw["nargs"], kw["type"] = "+", typing.get_args(kind)[0]
    elif kind is not str:
        kw["type"] = kind
    if default is not ... and default is not None and default is not False and default != "":
        kw["help"] = f"{kw['help']} (default: %(default)s)".strip()
    if extra.get("positional"):
        return name, kw
    kw |= {"dest": name, "required": default is ..., "default": None if default is ... else default}
    return _flag(name, field), kw


class Options(BaseModel):
    """A command's options: subclass with ``option()`` fields, the class keywords ``prog``,
    ``summary`` (default: the class docstring, else the module docstring's first line) and
    ``settings`` (where ``option(setting=...)`` defaults come from); ``parse(argv)`` reads them."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    prog: ClassVar[str | None] = None
    summary: ClassVar[str | None] = None
    settings_class: ClassVar[type[BaseSettings]] = RuntimeSettings

    def __init_subclass__(
        cls,
        prog: str | None = None,
        summary: str | None = None,
        settings: type[BaseSettings] | None = None,
        **kw: Any,
    ) -> None:
        super().__init_subclass__(**kw)
        cls.prog, cls.settings_class = prog or cls.prog, settings or cls.settings_class
        first_line = (sys.modules[cls.__module__].__doc__ or "").split("\n")[0]
        cls.summary = summary or (cls.summary if prog is None else cls.__doc__ or first_line)

    @model_validator(mode="before")
    @classmethod
    def _settings_defaults(cls, data: Any) -> Any:
        """Options built in code, not parsed, take what they omit of the settings too."""
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields.items()
        missing = {n: _extra(f)["setting"] for n, f in fields if "setting" in _extra(f)}
        missing = {n: s for n, s in missing.items() if n not in data}
        settings = cls.settings_class() if missing else None
        return data | {n: getattr(settings, s) for n, s in missing.items()}

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, settings: BaseSettings) -> None:
        """One argument per field, in declaration order (parents' fields first)."""
        for name, field in cls.model_fields.items():
            default = ... if field.is_required() else field.get_default()
            if setting := _extra(field).get("setting"):
                default = getattr(settings, setting)
            name_or_flag, kw = _argument(name, field, default)
            parser.add_argument(name_or_flag, **kw)

    @classmethod
    def parser(cls, settings: BaseSettings | None = None) -> argparse.ArgumentParser:
        """The command's parser, its defaults from ``settings`` (default: the environment's)."""
        parser = argparse.ArgumentParser(prog=cls.prog, description=cls.summary)
        cls.add_arguments(parser, settings or cls.settings_class())
        return parser

    @classmethod
    def from_namespace(cls, parser: argparse.ArgumentParser, args: argparse.Namespace) -> Self:
        """The options of parsed flags; a value out of bounds is a usage error (exit 2)."""
        try:
            return cls.model_validate({k: getattr(args, k) for k in cls.model_fields})
        except ValidationError as exc:
            err = exc.errors()[0]
            name = "".join(str(part) for part in err["loc"][:1])
            flag = _flag(name, cls.model_fields.get(name))
            parser.error(f"argument {flag}: {err['msg'].lower()}")

    @classmethod
    def parse(cls, argv: Sequence[str], settings: BaseSettings | None = None) -> Self:
        """``argv`` as options (``--help`` and bad flags exit like argparse)."""
        parser = cls.parser(settings)
        return cls.from_namespace(parser, parser.parse_args(list(argv)))
