"""The ``svdedit`` command line: one console script, one module per group of subcommands.

    export.py    svdedit export                       (needs torch; imported only when it runs)
    engines.py   svdedit check, build, quantize        (an engine dir: verify it; TensorRT plans for it)
    generate.py  svdedit generate, svdedit reconstruct
    edit.py      svdedit learn, svdedit edit, svdedit probe
    serve.py     svdedit serve                         (extra svdedit[serve]; imported only when it runs)
    tools.py     svdedit demo, svdedit env             (the quick start on the built-in engine; versions and devices)
    args.py      the argument types, option groups and progress bar they share

Every argparse parser and progress bar lives here; the library below prints nothing and takes plain
arguments. A user mistake (``runtime.errors.USER_ERRORS``) is printed as one clear message with exit
status 2, no traceback; an interrupt (Ctrl-C, SIGTERM, SIGHUP) exits 130; warnings the library logs (e.g. an onnxruntime provider that fell back to the
CPU) are printed as "svdedit: ...".
"""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    from svdedit.cli import edit, engines, export, generate, serve, tools
    from svdedit.runtime import __version__

    parser = argparse.ArgumentParser(
        prog="svdedit",
        description=(
            "Attribute editing of Stable Diffusion images through the SVD of their latents, "
            "deployed on ONNX Runtime. Try it: `svdedit demo` (the built-in engine svdedit:shapes). For your "
            "own model, `svdedit export` it once (needs torch), then run the torch-free commands on the "
            "engine dir it writes."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"svdedit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in (tools, export, engines, generate, edit, serve):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from svdedit.cli.args import flag_of
    from svdedit.runtime.errors import USER_ERRORS, InvalidRequestError

    args = build_parser().parse_args(argv)
    _print_library_warnings()
    _stop_on_signals()
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as exc:  # a request's field is named as this command line names it (--t-edit)
        said = exc.spelt(flag_of(exc.field)) if isinstance(exc, InvalidRequestError) else str(exc)
        print(f"svdedit {args.command}: error: {said}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        said = str(exc) or "interrupted; nothing half-written was left behind (every output is written whole or not at all)."
        print(f"svdedit {args.command}: {said}", file=sys.stderr)
        return 130


def _stop_on_signals() -> None:
    """SIGTERM and SIGHUP stop a command as Ctrl-C does (a service manager or a closed terminal sends them)."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), interrupt)


def _print_library_warnings() -> None:
    """The library's loggers ("svdedit.*") to stderr as "svdedit: message", warnings and above."""
    log = logging.getLogger("svdedit")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("svdedit: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.WARNING)
        log.propagate = False
