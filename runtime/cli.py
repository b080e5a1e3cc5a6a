"""The runtime's subcommands (torch-free)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check", help="verify an engine dir and run each of its networks once",
        description="Verify an engine dir: the manifest's format version, every file's sha256, then one "
                    "onnxruntime call per network at the model's default size, checked against the manifest's "
                    "declared outputs. Prints one JSON line per network.",
    )
    p.add_argument("engine_dir", metavar="ENGINE_DIR", help="a folder written by `svdedit export`")
    p.add_argument("--provider", default="auto", help="onnxruntime execution provider (default: auto)")
    p.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    from svdedit.runtime.engine import smoke_test

    for line in smoke_test(args.engine_dir, provider=args.provider):
        print(json.dumps(line))
    return 0
