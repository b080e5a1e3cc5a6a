"""`svdedit serve ENGINE_DIR`: the editing service (HTTP API, web page, metrics), on uvicorn or Ray Serve."""

from __future__ import annotations

import argparse
import importlib.util
import json
from dataclasses import fields
from pathlib import Path

from svdedit.cli.args import command, number, positive_int

SERVE_DESCRIPTION = """\
Serve ENGINE_DIR over HTTP: learn attributes, edit generated or uploaded images, generate; a web page
at /, the API's schema at /docs, Prometheus metrics at /metrics, /healthz and /readyz. The engines are
opened once; concurrent edits that share their knobs are batched into shared UNet calls (--max-batch
images, waiting at most --max-wait-ms). A full queue answers 503 with Retry-After. With --ray the same
app runs as a Ray Serve deployment of --replicas replicas (extra svdedit[ray]).

LoRA adapters: --lora NAME=FILE (repeatable, --lora-scale S paired by position) on an engine dir
exported --lora-ready. Each is merged once (cached per user) and opened beside the engine as exported;
a request picks one by name in its `lora` field, GET /v1/adapters lists them.
"""

#: ServeSettings' fields that are not one flag each
NOT_FLAT = ("engine_dir", "limits", "lora")
SETTING_HELP = {
    "store": "the attribute store folder (default: ~/.local/share/svdedit/attributes/<engine identity>)",
    "provider": "what runs the networks (see svdedit generate --help): auto, tensorrt, ort-tensorrt, cuda, cpu or "
                "openvino",
    "precision": "what the networks compute in: fp32 or bf16 with --provider openvino (default bf16 where the CPU "
                 "has bf16 units), else the engine dir's own (see svdedit generate --help)",
    "max_batch": "most images in one batch", "max_wait_ms": "longest wait of a request for others to batch with",
    "max_queue": "most images waiting; beyond, 503",
    "request_timeout_s": "a request still unanswered after this many seconds gets 504",
    "body_timeout_s": "a request's body must have arrived this many seconds after the request began (slow clients "
                      "get 408 and the connection closes)",
    "inflight_body_mb": "MiB of request bodies held at once, all requests together; beyond, 503",
    "decode_workers": "request bodies parsed and images decoded at once, off the event loop (more wait their turn)",
    "max_connections": "open connections and requests at once (uvicorn's limit_concurrency); beyond, 503",
    "edit_cache_mb": "MiB of inverted images kept, so that re-editing one skips its inversion (0 = off)",
    "max_file_bytes": "largest image upload", "max_pixels": "largest image, in pixels (read from its header)",
    "max_aspect": "largest aspect ratio of an image", "max_images": "(command line only: images of one edit run)",
    "max_seeds": "most seeds in one edit request", "max_prompt_chars": "longest prompt",
    "max_steps": "most DDIM steps a request may ask for", "max_learn_iters": "most Adam steps of a learn request",
    "max_batch_size": "(command line only: largest --batch)", "max_grid": "(command line only: largest probe grid)",
}


def register(sub: argparse._SubParsersAction) -> None:
    from svdedit.runtime.limits import Limits
    from svdedit.serve.settings import ServeSettings

    p = command(sub, "serve", run, "serve an engine dir over HTTP: API, web page, metrics (extra svdedit[serve])",
                description=SERVE_DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("engine_dir", metavar="ENGINE_DIR", help="an engine dir written by `svdedit export`, or svdedit:shapes (the embedded model, built in)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=positive_int, default=8000, help="port to listen on")
    g = p.add_argument_group("service settings (the limits are runtime/svdedit/runtime/limits.py's, shared with the command line)")
    for f in [f for f in fields(ServeSettings) if f.name not in NOT_FLAT] + list(fields(Limits)):
        kind = {"int": positive_int, "float": number}.get(f.type.split(" ")[0], str)
        g.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=f.default,
                       help=SETTING_HELP[f.name])
    a = p.add_argument_group("LoRA adapters (an engine dir exported --lora-ready)")
    a.add_argument("--lora", action="append", default=argparse.SUPPRESS, metavar="NAME=FILE",
                   help="a LoRA adapter (.safetensors: diffusers/peft or kohya keys) that requests name in their `lora` "
                        "field. Repeat for several; each takes the memory of the networks it changes")
    a.add_argument("--lora-scale", action="append", default=argparse.SUPPRESS, type=number, metavar="S",
                   help="the strength of the --lora of the same position (default 1; -8 to 8)")
    r = p.add_argument_group("Ray Serve (extra svdedit[ray])")
    r.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment instead of one uvicorn process")
    r.add_argument("--replicas", type=positive_int, default=1, help="replicas (each opens the engines once)")
    r.add_argument("--cpus-per-replica", type=number, default=1.0, help="CPUs Ray reserves per replica")
    r.add_argument("--gpus-per-replica", type=number, default=0.0, help="GPUs per replica (1 on a GPU cluster)")
    r.add_argument("--ray-address", default=None, help="join this Ray cluster (e.g. auto) instead of starting one")
    r.add_argument("--autoscaling", default=None, metavar="JSON",
                   help='Ray Serve autoscaling_config instead of --replicas, e.g. '
                        '\'{"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}\'')


def run(args: argparse.Namespace) -> int:
    from svdedit.runtime.engines.manifest import read_manifest
    from svdedit.runtime.errors import SvdeditError
    from svdedit.serve.settings import ServeSettings

    try:
        from svdedit.serve import run as serving
    except ImportError as exc:
        raise SvdeditError(f"serving needs the serve extra ({exc.name} is missing): pip install 'svdedit[serve]'"
                           f"{' or svdedit[ray]' if args.ray else ''}.") from None
    manifest = read_manifest(args.engine_dir)  # a wrong engine dir is an error now, not in a replica
    from svdedit.runtime.limits import Limits

    names = [f.name for f in fields(ServeSettings) if f.name not in NOT_FLAT]
    names += [f.name for f in fields(Limits)]
    options = {n: getattr(args, n) for n in names}
    options["store"] = Path(options["store"]) if options["store"] else None
    settings = ServeSettings.make(Path(args.engine_dir), lora=named_adapters(args), **options).check()
    from svdedit.runtime.engines import backend_of, refuse_swapped, resolve_precision, resolve_provider
    from svdedit.runtime.engines.lora import merge_plan, read_adapter

    resolve_precision(settings.provider, settings.precision, manifest)  # a precision it cannot run: an error now
    for _, file, scale in settings.lora:  # an adapter this engine or provider cannot take: an error now, not later
        if merge_plan(manifest, [read_adapter(file, scale)]):
            refuse_swapped(backend_of(resolve_provider(settings.provider, manifest), manifest, args.engine_dir), manifest,
                           args.engine_dir)
    if not args.ray:
        serving.run_uvicorn(settings, args.host, args.port, manifest)
        return 0
    try:
        autoscaling = json.loads(args.autoscaling) if args.autoscaling else None
    except ValueError as exc:
        raise SvdeditError(f"--autoscaling is not JSON ({exc}); e.g. '{{\"min_replicas\": 1, \"max_replicas\": 4}}'.") from None
    if importlib.util.find_spec("ray") is None:
        raise SvdeditError("--ray needs Ray Serve: pip install 'svdedit[ray]'.")
    serving.run_ray(settings, args.host, args.port, args.replicas, args.cpus_per_replica, args.gpus_per_replica,
                    args.ray_address, autoscaling)
    return 0


def named_adapters(args: argparse.Namespace) -> tuple[tuple[str, str, float], ...]:
    """(name, file, scale) of each --lora NAME=FILE, its --lora-scale paired by position (1 where none is given);
    the files as absolute paths (a Ray replica may start elsewhere)."""
    from svdedit.cli.args import lora_pairs
    from svdedit.runtime.errors import SvdeditError

    out = []
    given = argparse.Namespace(lora=getattr(args, "lora", []), lora_scale=getattr(args, "lora_scale", []))
    for spec, scale in lora_pairs(given):
        name, eq, file = spec.partition("=")
        if not eq or not name or not file:
            raise SvdeditError(f"--lora {spec!r}: the service names its adapters: give --lora NAME=FILE, e.g. "
                               f"--lora watercolour=watercolour.safetensors (requests then send \"lora\": \"watercolour\").")
        out.append((name, str(Path(file).expanduser().resolve()), scale))
    return tuple(out)
