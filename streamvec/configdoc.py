"""Render docs/configuration.md, the configuration reference, from `streamvec.settings.Settings`.

Read from code: each field (type, bounds, default, description), the env prefix, and the flags
of `streamvec.commands.build_parser()` whose help says `[env STREAMVEC_<FIELD>]` (or, global ones,
whose dest is the field). `make docs` regenerates; tests/streamvec/test_configdoc.py fails if stale.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import SecretBytes, SecretStr
from pydantic.fields import FieldInfo

from streamvec.settings import Settings, redact_url

DOC_PATH = Path("docs") / "configuration.md"
UNDOCUMENTED = "**undocumented**"

# Defaults computed by a factory (the home folder, the OS user) are rendered in a neutral
# environment, so the reference is the same on every machine; these stand-ins are then shown
# as what they stand for.
_HOME = "/streamvec-reference-home"
_USER = "streamvec-reference-user"
_XDG = "/streamvec-reference-xdg"
_SHOWN_AS = {_HOME: "~", _USER: "<OS user>", _XDG: "$XDG_DATA_HOME"}
_PROBE = "streamvec-reference-probe-secret"  # noqa: S105 - a marker, not a credential
_SIMPLE_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path",
                 SecretStr: "string", SecretBytes: "bytes", Any: "any JSON value"}


@dataclass(frozen=True, slots=True)
class SettingDoc:
    """What the reference says about one setting."""

    name: str
    env: str
    flags: tuple[str, ...]
    type: str
    default: str
    secrecy: str  # "", "secret" or "masked keys"
    description: str


@dataclass(frozen=True, slots=True)
class ExtraVariable:
    """An env var that a flag's help names but that no Settings field reads."""

    env: str
    flags: tuple[str, ...]
    description: str


def env_name(settings_cls: type[Settings], field: str) -> str:
    """The env var that sets `field`: the model's env prefix plus the field name, upper case."""
    prefix = settings_cls.model_config.get("env_prefix", "")
    return f"{prefix}{field}".upper()


def describe_settings(parser: argparse.ArgumentParser,
                      settings_cls: type[Settings] = Settings) -> list[SettingDoc]:
    """One SettingDoc per field of `settings_cls`, in declaration order, flags from `parser`."""
    docs = []
    with neutral_environment():
        for name, field in settings_cls.model_fields.items():
            env = env_name(settings_cls, name)
            docs.append(SettingDoc(
                name=name, env=env, flags=tuple(_flags_for(parser, name, env)),
                type=_type_text(field.annotation, field.metadata), default=_default_text(field),
                secrecy=_secrecy(settings_cls, name, field),
                description=(field.description or "").strip() or UNDOCUMENTED))
    return docs


def extra_variables(parser: argparse.ArgumentParser,
                    settings_cls: type[Settings] = Settings) -> list[ExtraVariable]:
    """Env vars named in `parser`'s flag help texts that are not Settings fields, by name."""
    known = {env_name(settings_cls, name) for name in settings_cls.model_fields}
    prefix = settings_cls.model_config.get("env_prefix", "") or "STREAMVEC_"
    pattern = re.compile(rf"\[env ({re.escape(prefix)}[A-Z0-9_]+)")
    found: dict[str, list[tuple[tuple[str, ...], argparse.Action]]] = {}
    for where, action in _all_options(parser):
        for env in pattern.findall(action.help or ""):
            if env not in known:
                found.setdefault(env, []).append((where, action))
    return [ExtraVariable(env, tuple(_flag_texts(matches)), _clean_help(matches[0][1].help))
            for env, matches in sorted(found.items())]


def render(parser: argparse.ArgumentParser, settings_cls: type[Settings] = Settings) -> str:
    """The whole configuration reference as Markdown, for the command line `parser` builds."""
    settings = describe_settings(parser, settings_cls)
    extras = extra_variables(parser, settings_cls)
    lines = [*_HEADER, "", "| setting | env var | flag | type | default | description |",
             "|---|---|---|---|---|---|"]
    lines += [_row(f"`{s.name}`", f"`{s.env}`", "<br>".join(s.flags) or "-",
                   f"{s.type}, **{s.secrecy}**" if s.secrecy else s.type, s.default,
                   s.description) for s in settings]
    lines += ["", "## Secrets", ""]
    lines += [f"- `{s.env}` ({s.secrecy}): {_SECRET_TEXT[s.secrecy]}"
              for s in settings if s.secrecy]
    lines += ["", "Nothing else is secret: `Settings.describe()` and the repr of a `Settings` "
              "show every other setting as it is.", ""]
    if extras:
        lines += ["## Read outside `Settings`", "", "| env var | flag | description |",
                  "|---|---|---|"]
        lines += [*(_row(f"`{e.env}`", "<br>".join(e.flags), e.description) for e in extras), ""]
    return "\n".join(lines)


@contextmanager
def neutral_environment() -> Iterator[None]:
    """Run with no STREAMVEC_*/XDG_* vars and a stand-in home and user; restore afterwards."""
    saved = dict(os.environ)
    try:
        for key in list(os.environ):
            if key.startswith(("STREAMVEC_", "XDG_")):
                del os.environ[key]
        os.environ["HOME"] = _HOME
        os.environ.update(dict.fromkeys(("LOGNAME", "USER", "LNAME", "USERNAME"), _USER))
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


_HEADER = """# Configuration reference

<!-- Generated from streamvec/settings.py by `streamvec config reference --output \
docs/configuration.md` (`make docs`). Do not edit by hand: tests/streamvec/test_configdoc.py fails \
when this file differs from what the settings render. -->

Every streamvec process reads one `Settings` object (`streamvec/settings.py`). A setting takes \
the first of:

1. its command-line flag, where it has one. Global flags go before the command \
(`streamvec --kafka broker-1:9092 indexer --collection products`); a command's own flag goes \
after it;
2. its environment variable;
3. its default.

The SDKs take a `Settings` object (`Producer(name, settings=...)`, `Client(settings=...)`); \
`Settings(kafka=...)` takes any setting by its name as a keyword argument, which wins over the \
environment. Mappings and lists given in an environment variable are JSON, unless the \
description names another form. A `~` in a default is the home folder of the user who runs \
the process.
""".splitlines()
_SECRET_TEXT = {
    "secret": "held as a secret; never printed or logged in clear (a URL shows `***` for its "
              "password).",
    "masked keys": "the values of secret-looking keys (passwords, tokens, keys) are printed "
                   "and logged as `***`.",
}


def _flags_for(parser: argparse.ArgumentParser, field: str, env: str) -> list[str]:
    """Flags that set `field`: global ones first, then each command's own."""
    names_env = re.compile(rf"\[env {re.escape(env)}(?![A-Z0-9_])")
    matches = [(where, action) for where, action in _all_options(parser)
               if names_env.search(action.help or "") or (not where and action.dest == field)]
    return _flag_texts(matches)


def _flag_texts(matches: list[tuple[tuple[str, ...], argparse.Action]]) -> list[str]:
    """`--flag` for a global flag; `--flag` (`cmd`, `other cmd`) for the commands that take it."""
    commands: dict[tuple[str, bool], list[str]] = {}
    for where, action in matches:
        text = f"`{max(action.option_strings, key=len)}`"
        if isinstance(action, argparse._AppendAction):
            text += " (repeatable)"
        commands.setdefault((text, bool(where)), []).extend(
            [f"`{' '.join(where)}`"] if where else [])
    return [f"{text} ({', '.join(cmds)})" if on_command else text
            for (text, on_command), cmds in commands.items()]


def _all_options(parser: argparse.ArgumentParser,
                 where: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.Action]]:
    """Every optional flag of `parser` and its subcommands, with the command path it is on."""
    seen: set[int] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases map several names to one parser
                    seen.add(id(sub))
                    yield from _all_options(sub, (*where, name))
        elif action.option_strings and not isinstance(
                action, (argparse._HelpAction, argparse._VersionAction)):
            yield where, action


def _clean_help(text: str | None) -> str:
    """A flag's help without its `[env ...]` note, as a sentence."""
    cleaned = re.sub(r"\s*\[env [^\]]*\]", "", text or "").strip()
    return cleaned[:1].upper() + cleaned[1:] if cleaned else UNDOCUMENTED


def _type_text(tp: Any, metadata: list[Any] = ()) -> str:
    """A type in words, with its bounds: `integer or unset, 0..65535`."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        text = _type_text(args[0])
    elif origin in (Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        text = " or ".join(_type_text(a) for a in present)
        text += " or unset" if len(present) < len(args) else ""
    elif origin is Literal:
        text = "one of " + ", ".join(f"`{v}`" for v in args)
    elif origin in (dict, Mapping) and len(args) == 2:
        text = f"mapping of {_type_text(args[0])} to {_type_text(args[1])}"
    elif origin in (list, tuple, set, frozenset, Sequence) and args:
        text = f"list of {_type_text(args[0])}"
    else:
        text = _SIMPLE_TYPES.get(tp, getattr(tp, "__name__", str(tp)))
    bounds = _constraints(metadata)
    return f"{text}, {bounds}" if bounds else text


def _constraints(metadata: list[Any]) -> str:
    """Bounds as text: `0..65535`, `>= 1`, `1..256 characters`."""
    bound = {type(m): astuple(m)[0] for m in metadata
             if isinstance(m, (Ge, Gt, Le, Lt, MinLen, MaxLen))}
    low, high = bound.get(Ge), bound.get(Le)
    parts = [f"{low}..{high}"] if low is not None and high is not None else [
        f"{sign} {bound[kind]}" for kind, sign in ((Ge, ">="), (Le, "<=")) if kind in bound]
    parts += [f"{sign} {bound[kind]}" for kind, sign in ((Gt, ">"), (Lt, "<")) if kind in bound]
    if MinLen in bound or MaxLen in bound:
        parts.append(f"{bound.get(MinLen, 0)}..{bound.get(MaxLen, '')} characters")
    return ", ".join(parts)


def _default_text(field: FieldInfo) -> str:
    """The default as shown; a factory that follows XDG_DATA_HOME gets both of its forms."""
    if field.is_required():
        return "required"
    plain = _value_text(field.get_default(call_default_factory=True, validated_data={}))
    if field.default_factory is None:
        return plain
    os.environ["XDG_DATA_HOME"] = _XDG
    try:
        with_xdg = _value_text(field.get_default(call_default_factory=True, validated_data={}))
    finally:
        del os.environ["XDG_DATA_HOME"]
    return plain if with_xdg == plain else f"{plain}; {with_xdg} if XDG_DATA_HOME is set"


def _value_text(value: Any) -> str:
    if isinstance(value, SecretStr):
        value = redact_url(value.get_secret_value())
    if value is None:
        return "unset"
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else str(
        value)
    if text == "":
        return "empty"
    for stand_in, shown in _SHOWN_AS.items():
        text = text.replace(stand_in, shown)
    return f"`{text}`"


def _secrecy(settings_cls: type[Settings], name: str, field: FieldInfo) -> str:
    """"secret" for a secret type; "masked keys" if `describe()` masks a mapping's passwords."""
    def mentions(tp: Any) -> bool:
        return tp in (SecretStr, SecretBytes) or any(mentions(a) for a in get_args(tp))

    if mentions(field.annotation):
        return "secret"
    if get_origin(field.annotation) not in (dict, Mapping):
        return ""
    try:
        shown = settings_cls(**{name: {"sasl.password": _PROBE}}).describe()
    except Exception:  # a mapping this probe cannot fill is reported as not masked
        return ""
    return "masked keys" if name in shown and _PROBE not in str(shown[name]) else ""


def _row(*cells: str) -> str:
    """One Markdown table row; pipes and line breaks in a cell are made harmless."""
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
