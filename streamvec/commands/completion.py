"""`streamvec completion bash|zsh|fish`: print the shell code that completes `streamvec`."""

from __future__ import annotations

import argparse
import sys
import textwrap

from streamvec.settings import Settings

SHELLS = ("bash", "zsh", "fish")
# Where each shell reads the code from, for the help text and docs/operations.md.
ACTIVATION = {
    "bash": 'eval "$(streamvec completion bash)"   # in ~/.bashrc',
    "zsh": 'eval "$(streamvec completion zsh)"    # in ~/.zshrc, after compinit',
    "fish": "streamvec completion fish | source   # in ~/.config/fish/config.fish",
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `completion` command to the top-level parser."""
    p = sub.add_parser(
        "completion", help="print shell code that completes streamvec commands and flags",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Print the code that makes SHELL complete `streamvec` commands, verbs, flags and "
            "choices as you type (the argcomplete library answers from the command's own "
            "parser, so completion always matches the installed version). Activate it with:",
            width=78) + "\n\n" + "\n".join(f"  {line}" for line in ACTIVATION.values()))
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    p.set_defaults(handler=_completion)


def _completion(args: argparse.Namespace, settings: Settings) -> int:
    import argcomplete

    sys.stdout.write(argcomplete.shellcode(["streamvec"], shell=args.shell))
    return 0
