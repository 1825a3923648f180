"""A command's options declared once, as a pydantic model; its argparse parser is derived.

Each field is a flag (``work_dir`` -> ``--work-dir``) whose type, default, choices and help
(``description``) come from the field, so the typed options and the parser cannot drift apart.
A default that a ``CTL_*`` variable sets is named, not copied: ``option(setting="work_dir")``
reads it from the command's settings (when the parser is built, or when options built in code
omit it), so flag and environment agree.
Field constraints (``ge=1``, ...) are checked after parsing and fail like any argparse error.
pydantic-settings' own CLI was not used: it spells flags ``--work_dir`` or takes JSON lists, and
its errors are no argparse exits.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from runtime.config import RuntimeSettings


def option(
    default: Any = ...,
    help: str = "",
    *,
    setting: str | None = None,
    flag: str | None = None,
    choices: Sequence[Any] | None = None,
    positional: bool = False,
    metavar: str | None = None,
    **constraints: Any,
) -> Any:
    """A field of an ``Options`` model: ``help`` is its flag's help; ``setting`` names the
    settings attribute its default comes from; ``flag`` overrides the derived spelling."""
    extra = {"setting": setting, "flag": flag, "choices": choices, "positional": positional}
    extra["metavar"] = metavar
    return Field(default, description=help, json_schema_extra=extra, **constraints)  # type: ignore[arg-type]


def _extra(field: FieldInfo | None) -> dict[str, Any]:
    """What ``option()`` recorded of a field (nothing for a plain pydantic field)."""
    extra = field.json_schema_extra if field is not None else None
    return extra if isinstance(extra, dict) else {}


def _flag(name: str, field: FieldInfo | None) -> str:
    return _extra(field).get("flag") or "--" + name.replace("_", "-")


def _split(text: str) -> tuple[str, ...]:
    return tuple(v for v in text.split(",") if v)


def _argument(name: str, field: FieldInfo, default: Any) -> tuple[list[str], dict[str, Any]]:
    """The ``add_argument`` call of one field: its names and keywords."""
    extra = _extra(field)
    kind = field.annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    kw: dict[str, Any] = {"help": (field.description or "").replace("%", "%%")}
    required = default is ...
    if kind is bool:
        kw["action"] = argparse.BooleanOptionalAction if default else "store_true"
    elif typing.get_origin(kind) is Literal:
        kw["choices"] = typing.get_args(kind)
    elif typing.get_origin(kind) is tuple:  # a comma-separated list (argparse splits a default)
        kw["type"], default = _split, ",".join(default) if isinstance(default, tuple) else default
    elif typing.get_origin(kind) is list:
        kw["nargs"] = "+"
        kw["type"] = typing.get_args(kind)[0]
    elif kind is not str:
        kw["type"] = kind
    if extra.get("choices") is not None:
        kw["choices"] = extra["choices"]
    if extra.get("metavar"):
        kw["metavar"] = extra["metavar"]
    if not required and default is not None and default is not False and default != "":
        kw["help"] = f"{kw['help']} (default: %(default)s)".strip()
    if extra.get("positional"):
        return [name], kw
    kw |= {"dest": name, "required": required} | ({} if required else {"default": default})
    return [_flag(name, field)], kw


class Options(BaseModel):
    """A command's options: subclass with ``option()`` fields; ``parse(argv)`` reads them."""

    model_config = ConfigDict(frozen=True)

    prog: ClassVar[str] = ""
    """The command, as its usage line spells it (``ctl train``)."""
    summary: ClassVar[str | None] = None
    """The parser's description (default: the first line of the command module's docstring)."""
    settings_class: ClassVar[type[BaseSettings]] = RuntimeSettings
    """Where ``option(setting=...)`` defaults come from (the ``CTL_*`` environment)."""

    @model_validator(mode="before")
    @classmethod
    def _settings_defaults(cls, data: Any) -> Any:
        """Options built in code, not parsed, take what they omit of the settings too."""
        missing = [
            (name, _extra(f)["setting"])
            for name, f in cls.model_fields.items()
            if _extra(f).get("setting") and isinstance(data, dict) and name not in data
        ]
        if not missing:
            return data
        settings = cls.settings_class()
        return data | {name: getattr(settings, setting) for name, setting in missing}

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, settings: BaseSettings) -> None:
        """One argument per field, in declaration order (parents' fields first)."""
        for name, field in cls.model_fields.items():
            setting = _extra(field).get("setting")
            if setting:
                default = getattr(settings, setting)
            else:
                default = ... if field.is_required() else field.default
            names, kw = _argument(name, field, default)
            parser.add_argument(*names, **kw)

    @classmethod
    def parser(cls, settings: BaseSettings | None = None) -> argparse.ArgumentParser:
        """The command's parser, its defaults read from ``settings`` (default: the
        environment's)."""
        doc = sys.modules[cls.__module__].__doc__ or ""
        summary = cls.summary if cls.summary is not None else doc.split("\n")[0]
        parser = argparse.ArgumentParser(prog=cls.prog or None, description=summary)
        cls.add_arguments(parser, settings or cls.settings_class())
        return parser

    @classmethod
    def from_namespace(cls, parser: argparse.ArgumentParser, args: argparse.Namespace) -> Self:
        """The options of parsed flags; a value out of a field's bounds is a usage error
        (exit 2) naming the flag."""
        try:
            return cls.model_validate({k: getattr(args, k) for k in cls.model_fields})
        except ValidationError as exc:
            err = exc.errors()[0]
            name = str(err["loc"][0]) if err["loc"] else ""
            flag = _flag(name, cls.model_fields.get(name))
            parser.error(f"argument {flag}: {err['msg'].lower()}")

    @classmethod
    def parse(cls, argv: Sequence[str], settings: BaseSettings | None = None) -> Self:
        """``argv`` as options (``--help`` and bad flags exit like argparse)."""
        parser = cls.parser(settings)
        return cls.from_namespace(parser, parser.parse_args(list(argv)))
