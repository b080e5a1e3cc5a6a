"""What every subcommand shares: argument types whose errors say what is allowed, --engine/--provider,
the method's knobs as options, and the progress bar (the library reports progress; the CLI draws it)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

import numpy as np

from svdedit.runtime.editing.knobs import Knobs
from svdedit.runtime.editing.request import describe
from svdedit.runtime.errors import SvdeditError
from svdedit.runtime.limits import LIMITS


# ---- argument types: each refuses what it cannot take, saying what is allowed ----
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def bounded_int(lo: int, hi: int):
    """A whole number from lo to hi."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is out of range; give {lo} to {hi}")
        return value
    return parse


def seed(text: str) -> int:
    return bounded_int(0, 2**63 - 1)(text)


def number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 0.5, 1, 1.5)") from None
    if not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number")
    return value


def bounded_number(lo: float, hi: float):
    """A finite number from lo to hi."""
    def parse(text: str) -> float:
        value = number(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value:g} is out of range; give {lo:g} to {hi:g}")
        return value
    return parse


def boolean(text: str) -> bool:
    words = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
    if text.lower() not in words:
        raise argparse.ArgumentTypeError(f"{text!r} is not a yes or no; write 1 or 0 (true/false, yes/no, on/off)")
    return words[text.lower()]


def seeds(text: str) -> list[int]:
    """'7', '0-99' or '1,5,9' (or a mix: '0-3,10'): at most LIMITS.max_seeds seeds, counted before they are listed."""
    ranges = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            ranges.append((int(lo), int(hi) if hi else int(lo)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed list; write e.g. 7, 0-99 or 1,5,9") from None
    count = sum(max(0, hi - lo + 1) for lo, hi in ranges)
    if count == 0:
        raise argparse.ArgumentTypeError(f"{text!r} names no seeds (is the range backwards?)")
    if count > LIMITS.max_seeds:
        raise argparse.ArgumentTypeError(f"{text!r} names {count} seeds; one run takes at most {LIMITS.max_seeds}")
    if any(lo < 0 or hi >= 2**63 for lo, hi in ranges):
        raise argparse.ArgumentTypeError(f"{text!r}: seeds are whole numbers from 0 to 2**63 - 1")
    return [s for lo, hi in ranges for s in range(lo, hi + 1)]


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def numbers(text: str) -> list[float]:
    values = [number(t) for t in text.split(",") if t.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} names no numbers; write e.g. 0,0.5,1")
    return values


def whole_numbers(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of whole numbers (e.g. 0,1,2)") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} names no numbers; write e.g. 0,1,2")
    return values


def prompt(text: str) -> str:
    """A prompt: valid UTF-8 text of at most LIMITS.max_prompt_chars characters."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("it is not valid UTF-8 text (type it again from a UTF-8 terminal)") from None
    if len(text) > LIMITS.max_prompt_chars:
        raise argparse.ArgumentTypeError(f"it is {len(text)} characters long; the limit is {LIMITS.max_prompt_chars}")
    return text


# ---- subcommands and groups of options ----
def command(sub: argparse._SubParsersAction, name: str, run, summary: str, description: str | None = None,
            **kwargs) -> argparse.ArgumentParser:
    """One subcommand: its line in `svdedit --help`, the description of its own --help, the function it runs."""
    p = sub.add_parser(name, help=summary, description=description or summary, **kwargs)
    p.set_defaults(run=run)
    return p



PROVIDER_HELP = ("what runs the networks: auto (TensorRT plans from `svdedit build` when this GPU has them, else "
                 "onnxruntime's TensorRT, CUDA, then CPU provider; never OpenVINO), tensorrt (the plans), ort-tensorrt, "
                 "cuda, cpu, or openvino (OpenVINO on the CPU, extra svdedit[openvino]: fastest on CPUs with bf16 "
                 "units, README)")
RUN_PRECISIONS = ("fp32", "fp16", "bf16")
PRECISION_HELP = ("what the networks compute in. --provider openvino: fp32 or bf16 (default bf16 where the CPU has "
                  "bf16 units, avx512_bf16 or amx_bf16; else fp32). Other providers run the engine dir's own "
                  "precision (`svdedit export --precision`) and refuse another")


def engine_args(p: argparse.ArgumentParser) -> None:
    """--engine, --provider and --precision, as every command that runs an engine dir takes them."""
    p.add_argument("--engine", required=True, metavar="DIR", help="an engine dir written by `svdedit export`, or "
                                                                    "svdedit:shapes (the embedded model, built in)")
    p.add_argument("--provider", default="auto",
                   help=PROVIDER_HELP)
    p.add_argument("--precision", choices=RUN_PRECISIONS, default=None,
                   help=PRECISION_HELP)
    p.add_argument("--cache-interval", type=bounded_int(1, 1000), metavar="N",
                   help="step caching (an engine exported with --step-cache): the UNet's deep branch runs every N "
                        "sampling steps, the steps between reuse it. 1 = exact. Default: the engine's own (2 for "
                        "--step-cache engines, benchmarks/results/speed_shapes_cpu.md; 1 otherwise)")
    p.add_argument("--invert-cache-interval", type=bounded_int(1, 1000), metavar="N",
                   help="the same for the DDIM inversion of real images. Default: the engine's own (1)")
    lora_args(p, "merged into the weights at run time, torch-free: the engine dir must be exported with "
                 "--lora-ready (onnxruntime's providers). The engine then has another identity: attributes learned "
                 "without the adapter are refused with it, and the other way round")
    p.add_argument("--size", type=int, metavar="PX",
                   help="image side to sample, learn and edit at (images are fitted to it): a multiple of the engine "
                        "dir's step (manifest.json image_size: 8 x the UNet's downsampling, 32 for SDXL) within its "
                        "range. Default: the model's (64 for svdedit:shapes, 512 for SD 1.5, 1024 for SDXL, where "
                        "512 is a quarter of the work)")


def lora_args(p: argparse.ArgumentParser, how: str) -> None:
    """--lora FILE and --lora-scale S, each repeatable: the scales pair with the adapters in order (default 1)."""
    p.add_argument("--lora", action="append", default=[], metavar="FILE",
                   help=f"a LoRA adapter (.safetensors: diffusers/peft or kohya keys) {how}. Repeat for several")
    p.add_argument("--lora-scale", action="append", default=[], type=number, metavar="S",
                   help="the strength of the --lora of the same position (default 1; 0 = not applied; -8 to 8)")


def lora_pairs(args: argparse.Namespace) -> list[tuple[str, float]]:
    """(file, scale) of each --lora, its --lora-scale paired by position (1 where none is given)."""
    if len(args.lora_scale) > len(args.lora):
        raise SvdeditError(f"{len(args.lora_scale)} --lora-scale for {len(args.lora)} --lora: give one scale per "
                           f"adapter, in the same order, or leave the scales out (1).")
    return [(f, args.lora_scale[i] if i < len(args.lora_scale) else 1.0) for i, f in enumerate(args.lora)]


def open_pipeline(args: argparse.Namespace):
    """The Pipeline of --engine, --provider, --precision, --size, --lora and the step-cache intervals (not yet
    entered)."""
    from svdedit.runtime.engines.lora import read_adapter
    from svdedit.runtime.pipeline import Intervals, Pipeline

    adapters = [read_adapter(f, s) for f, s in lora_pairs(args)]
    pipe = Pipeline(args.engine, args.provider, size=args.size, precision=args.precision, lora=adapters)
    default = pipe.default_intervals
    pipe.intervals = pipe.check_intervals(Intervals(args.cache_interval or default.sample,
                                                    args.invert_cache_interval or default.invert))
    return pipe


KNOB_HELP = {
    "steps": "DDIM steps of every trajectory", "guidance": "classifier-free guidance of sampling",
    "t_edit": "T_x as a fraction of the schedule (0 = clean image, 1 = pure noise)",
    "dtau": "take z this many DDIM steps earlier (noisier, >0) or later (<0) than x",
    "k": "singular triplets per channel taken from each of x and z",
    "tail": "keep x's residual beyond its top k (1) or drop it (0)",
    "continuation": "prompt after T_x: target (blended with --strength at edit time) or source (the paper, literally)",
    "window": "inject y at this many consecutive steps from T_x",
    "hidden": "MLP width", "w_target": "weight of the target loss L1 (0 = off)",
    "w_source": "weight of the source loss L2 (0 = off)", "w_target_sv": "weight of the target singular-value loss L3",
    "w_source_sv": "weight of the source singular-value loss L4", "iters": "Adam steps", "lr": "Adam learning rate",
    "inversion_guidance": "guidance of the DDIM inversion of real images",
    "uncaptioned_guidance": "guidance of the edit of a real image whose caption does not contain the attribute's word",
    "calibration_seeds": "seeds of the learning pair that calibrate the strength scale (0 = strength is the raw blend)",
}


def knob_args(p: argparse.ArgumentParser) -> None:
    """One option per field of Knobs (--t-edit, --w-source, ...), with its default."""
    d = Knobs()
    g = p.add_argument_group("method knobs (defaults measured in benchmarks/results/edit_quality.md)")
    for f in fields(Knobs):
        default = getattr(d, f.name)
        kind = {bool: boolean, int: int, float: number, str: str}[type(default)]
        g.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=default,
                       choices=("target", "source") if f.name == "continuation" else None,
                       # %(default)s: argparse fills it in, and ArgumentDefaultsHelpFormatter adds no second default
                       help=f"{KNOB_HELP[f.name]} (default %(default)s)")


def knobs_from(args: argparse.Namespace) -> Knobs:
    """The knobs as given (checked with the request they belong to)."""
    return Knobs(**{f.name: getattr(args, f.name) for f in fields(Knobs)})


# ---- the runtime's request fields, as this command line names them ----
#: a request field (runtime/svdedit/runtime/editing/request.py) -> its option, where it is not --field-name
FLAGS = {"attributes": "--attr", "images": "--image", "strengths": "--strength"}


def flag_of(field: str) -> str:
    """The option of a request field: "knobs.t_edit" -> "--t-edit", "strengths" -> "--strength"."""
    name = field.split(".", 1)[1] if field.startswith("knobs.") else field
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def about(field: str, extra: str = "") -> str:
    """The help of a request field's option: the runtime's description of it, its range, and `extra`."""
    return describe(field, extra).replace("%", "%%")  # argparse formats help with %


# ---- progress ----
def progress_bar(desc: str, unit: str = "step"):
    """A tqdm bar on stderr (off when it is not a terminal) and its update(done, total) callback."""
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: an interrupt then never prints its traceback
    bar = tqdm(desc=desc, unit=unit, file=sys.stderr, leave=False, disable=not sys.stderr.isatty())

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update
