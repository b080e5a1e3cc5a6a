"""The ``svdedit`` command line: one console script, one subcommand per job.

Each stage registers its own subcommands (``svdedit.export.cli``, ``svdedit.runtime.cli``); this
module only dispatches, so that ``svdedit --help`` and the runtime commands never import torch.
A ``SvdeditError`` (a user mistake) is printed as one clear message with exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys

__version__ = "0.1.0"


def build_parser() -> argparse.ArgumentParser:
    from svdedit.export import cli as export_cli
    from svdedit.runtime import cli as runtime_cli
    from svdedit.runtime import edit_cli

    parser = argparse.ArgumentParser(
        prog="svdedit",
        description=(
            "Attribute editing of Stable Diffusion images through the SVD of their latents, "
            "deployed on ONNX Runtime. First `svdedit export` a model once (needs torch), then "
            "run the torch-free commands on the engine dir it writes."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"svdedit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    export_cli.register(sub)
    runtime_cli.register(sub)
    edit_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from svdedit.runtime.errors import SvdeditError

    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except SvdeditError as exc:
        print(f"svdedit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"svdedit {args.command}: interrupted; nothing half-written was left behind.", file=sys.stderr)
        return 130
