"""`streamvec config reference`: write or check docs/configuration.md, made from the settings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamvec import configdoc, files
from streamvec.commands.common import add_group, add_json, print_json
from streamvec.commands.errors import CommandError, UsageError
from streamvec.settings import Settings

REGENERATE = "make docs (or: streamvec config reference --output docs/configuration.md)"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `config` command group to the top-level parser."""
    verbs = add_group(sub, "config", help="the configuration reference",
                      description="Every setting, its env var, flag, type and default.")
    ref = verbs.add_parser(
        "reference", help="render the configuration reference as Markdown",
        description="Render the configuration reference (docs/configuration.md) from "
        "streamvec/settings.py and the command's flags. Without --output it goes to stdout.")
    ref.add_argument("--output", metavar="FILE", type=Path,
                     help="write the reference to FILE (with --check: the file to check; "
                     f"default {configdoc.DOC_PATH})")
    ref.add_argument("--check", action="store_true",
                     help="write nothing; exit 1 with the first difference if FILE is stale")
    add_json(ref, "print JSON: the Markdown as a string, or what was written or checked")
    ref.set_defaults(handler=_reference)


def stale_reason(path: Path, rendered: str) -> str | None:
    """Why the file at `path` is not exactly `rendered` (missing, or where it first differs)."""
    if not path.is_file():
        return f"{path} does not exist"
    current = path.read_bytes().decode("utf-8", "replace")  # as stored: no newline translation
    if current == rendered:
        return None
    old, new = current.splitlines(), rendered.splitlines()
    for number, (have, want) in enumerate(zip(old, new, strict=False), start=1):
        if have != want:
            return f"{path} differs at line {number}: it has {have!r}, the settings give {want!r}"
    if len(old) < len(new):
        return f"{path} ends after line {len(old)}; the settings give {len(new)} lines"
    if len(old) > len(new):
        return f"{path} has {len(old) - len(new)} line(s) more than the settings give"
    return f"{path} differs from the settings in its line endings"


def _reference(args: argparse.Namespace, settings: Settings) -> int:
    from streamvec.commands import build_parser  # the whole command line, this command's own

    rendered = configdoc.render(build_parser())
    if args.check:
        path = args.output or configdoc.DOC_PATH
        reason = stale_reason(path, rendered)
        if reason is not None:
            raise CommandError(f"the configuration reference is stale: {reason}; "
                               f"regenerate it with {REGENERATE}")
        if args.json:
            return print_json({"path": str(path), "up_to_date": True})
        print(f"{path} is up to date")
        return 0
    if args.output is None:
        if args.json:
            return print_json({"markdown": rendered})
        sys.stdout.write(rendered)
        return 0
    _write(args.output, rendered)
    if args.json:
        return print_json({"path": str(args.output), "written": True})
    print(f"wrote {args.output}")
    return 0


def _write(path: Path, text: str) -> None:
    """Replace `path` in one rename, so a reader never sees half a file."""
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: folder {path.parent} does not exist")
    files.write_atomic(path, text, durable=False)
