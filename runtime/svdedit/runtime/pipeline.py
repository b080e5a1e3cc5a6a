"""The runtime's pipeline: an engine dir, opened, turned into images. No torch.

    with Pipeline("engines/shapes") as pipe:
        latent = pipe.generate("a large red circle on the left", seed=0, steps=50, guidance=5.0)
        image = pipe.decode(latent)                              # float32 (1, 3, H, W) in about [-1, 1]
        trajectory = pipe.invert(pipe.encode(pixels), "a large red circle on the left", steps=50)
        again = pipe.sample(trajectory[-1], "a large red circle on the left", steps=50, guidance=1.0)

Latents are in the UNet's space (the VAE mean times the scaling factor), float32 (B, 4, h, w).
The story of one call, top to bottom: tokenize -> text_encoder (SDXL: both, conditioning.py) -> (for guidance, one
batched UNet call on [uncond, cond]) -> DDIM (runtime/svdedit/runtime/ddim.py) -> vae_decoder.
"Text embeddings" below are the conditioning arrays of conditioning.py: the text encoder's hidden states, and for
SDXL the pooled embedding and size conditioning packed beside them.

``denoise`` and ``invert_latents`` are the one DDIM driver of the runtime: generation, reconstruction,
editing and the probes all sample and invert through them, on text embeddings, and they own the NaN
guard (NaN or inf in the latents stops the run and names the step) and the progress reports.

Where the UNet runs on a GPU (onnxruntime's CUDA or TensorRT provider, or a TensorRT plan) and CuPy sees one, the
latents stay on that GPU for a whole DDIM run (``latents_on_device``): each step's UNet call takes and gives CuPy
arrays, the text conditioning crosses to the device once per run, and only the results come back to the host. The
methods still take and return NumPy arrays.

Step caching (an engine exported with --step-cache, export/svdedit/export/step_cache.py): the UNet is three networks, and
its deep branch is recomputed every ``intervals.sample`` steps of a sampling run (``intervals.invert`` of an
inversion); the steps between reuse the last deep feature. Interval 1 is the exact path.
"""

from __future__ import annotations

import functools
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from svdedit.kernels import array_module
from svdedit.runtime import ddim
from svdedit.runtime.conditioning import conditioning_for
from svdedit.runtime.engines import Manifest, open_engines, read_manifest, resolve_precision
from svdedit.runtime.engines.lora import Adapter, swapped_graphs
from svdedit.runtime.errors import NonFiniteLatentError, SvdeditError

Progress = Callable[[int, int], None]  # (steps done, steps in all)
#: what runs a network on a GPU, as Runner.provider names it
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "TensorRT")


def to_host(a):
    """A CuPy array's values as a NumPy array; a NumPy array as it is."""
    return a if array_module(a) is np else a.get()


def cupy_on_a_gpu():
    """CuPy, where it is installed and sees a GPU; else None."""
    try:
        import cupy

        return cupy if cupy.cuda.is_available() else None
    except Exception:  # noqa: BLE001  not installed, or no driver / no device: the latents stay on the host
        return None


class Denoised(NamedTuple):
    latent: np.ndarray               # the latent where denoising stopped
    kept: dict[int, np.ndarray]      # {step index: latent at that step's noise level} for the indices asked to keep


@dataclass(frozen=True)
class Intervals:
    """Step caching: the deep branch of the UNet runs every `sample` steps of sampling and every `invert` steps of
    an inversion (1 = every step: the exact path). Only an engine with a split UNet (--step-cache) takes > 1."""

    sample: int = 1
    invert: int = 1


class Pipeline:
    def __init__(self, engine_dir: str | Path, provider: str = "auto", intervals: Intervals | None = None,
                 manifest: Manifest | None = None, size: int | None = None, precision: str | None = None,
                 latents_on_device: bool | None = None, lora: Sequence[Adapter] = (), share: "Pipeline | None" = None):
        """`engine_dir`: a folder, or a built-in name (svdedit:shapes). `intervals`: step caching (default: the
        engine's own, recorded at export; 1 and 1 for an engine without step caching). `size`: the image side
        that noise() draws and fit() crops to (default: the model's, e.g. 1024 for SDXL; any side the engine dir
        accepts, e.g. 512 to learn and edit SDXL at a quarter of the work). `precision`: what the networks compute
        in (engines.resolve_precision: fp32 or bf16 with provider "openvino", else the engine dir's). `manifest`: the one
        read_manifest returned for this dir, when the caller has read it already (else it is read here: files
        hashed when new or changed since this user last hashed them, engines/verified.py). `latents_on_device`: keep
        the latents on the GPU during a DDIM run (the module docstring); None (the default) does so where the UNet
        runs on a GPU and CuPy sees it, False never (the latents cross to the host each step). `lora`: adapters
        (engines/lora.read_adapter) merged into the weights of an engine dir exported --lora-ready, on onnxruntime
        or OpenVINO (merged here, on construction, into the per-user cache, once per adapter set: swapped_graphs);
        the manifest then records them (Manifest.with_adapters), so the engine has another identity. `share`: a
        pipeline of the same engine dir, provider and precision without adapters (a service's base pipeline), whose
        runners run the networks these adapters leave unchanged, so that they are not loaded twice; it must be
        entered before this one and left after it.

        Constructing is cheap (the manifest, the schedule, the tokenizer); the networks are loaded on entering
        the `with` block."""
        from svdedit.runtime.engines.names import resolve_engine

        self.engine_dir = resolve_engine(engine_dir)
        base = manifest if manifest is not None else read_manifest(self.engine_dir)
        self.adapters = tuple(lora)
        graphs = swapped_graphs(self.engine_dir, base, self.adapters)
        self.manifest = base.with_adapters([a.record() for a in self.adapters])
        m = self.manifest
        self.intervals = self.check_intervals(intervals or self.default_intervals)
        self.schedule = ddim.Schedule.from_json(self.engine_dir / m.schedule.file)
        self.scaling = m.latent.vae_scaling_factor
        self.vae_factor = m.latent.vae_scale_factor
        self.channels = m.latent.channels
        self.size = self.check_size(m.image_size.default if size is None else size)
        self.precision = resolve_precision(provider, precision, m)
        self.engines = open_engines(self.engine_dir, m, provider, self.precision, graphs)
        #: the networks `share` runs for this pipeline (not entered here)
        self.borrowed = self.borrow(share, provider, graphs) if share is not None else set()
        self.provider_asked = provider
        self.conditioning = conditioning_for(self.engine_dir, m, self.engines)
        self._opened: ExitStack | None = None
        self.requested_latents_on_device = latents_on_device
        self.xp = np  # the array module of the latents during a DDIM run: numpy, or cupy (chosen on entering)

    def __enter__(self) -> "Pipeline":
        """Activate every runner and choose where the latents live; if either fails, the runners already active are
        deactivated before the error propagates."""
        with ExitStack() as stack:
            for name, runner in self.engines.items():
                if name not in self.borrowed:
                    stack.enter_context(runner)
            self.xp = self.latent_module()
            self._opened = stack.pop_all()
        return self

    def borrow(self, share: "Pipeline", provider: str, graphs: dict) -> set[str]:
        """Take `share`'s runners for the networks that `graphs` (the swapped ones) leave alone; their names."""
        if (share.engine_dir, share.provider_asked, share.precision) != (self.engine_dir, provider, self.precision) \
                or share.adapters:
            raise SvdeditError(f"a pipeline can share the networks of one of the same engine dir, provider and precision "
                               f"without adapters only ({share.engine_dir}, {share.provider_asked}, {share.precision}, "
                               f"{len(share.adapters)} adapters).")
        names = {name for name in self.engines if name not in graphs}
        self.engines.update({name: share.engines[name] for name in names})
        return names

    def latent_module(self):
        """numpy, or cupy when the latents are to stay on the GPU (the UNet's runners on a GPU provider, CuPy there)."""
        unet = [r.provider for n, r in self.engines.items() if n.startswith("unet")]
        wanted = self.requested_latents_on_device
        if wanted is False or (wanted is None and not all(p in GPU_PROVIDERS for p in unet)):
            return np
        cupy = cupy_on_a_gpu()
        if cupy is None and wanted:
            raise SvdeditError("latents on the device were asked for, but CuPy is not installed or sees no GPU: "
                               "install the gpu extra (pip install 'svdedit[gpu]') or leave the latents on the host.")
        return cupy or np

    def __exit__(self, *exc) -> None:
        if self._opened is not None:
            self._opened.close()
            self._opened = None

    def numerics_key(self) -> tuple:
        """What, besides the engine and the inputs, changes the numbers this pipeline computes (the key of cached
        latents, runtime/svdedit/runtime/editing/cache.py): the providers that run the networks (OpenVINO's name its
        precision), and the step caching."""
        return tuple(sorted(self.providers.items())) + (self.intervals,)

    # ---- step caching ----
    @property
    def default_intervals(self) -> Intervals:
        sc = self.manifest.step_cache
        return Intervals(sc.interval, sc.invert_interval) if sc is not None else Intervals()

    def check_size(self, size: int) -> int:
        limits = self.manifest.image_size
        if isinstance(size, bool) or not isinstance(size, int) or not limits.min <= size <= limits.max \
                or size % limits.multiple_of:
            raise SvdeditError(f"image size {size!r} is not one {self.engine_dir} accepts: a multiple of "
                               f"{limits.multiple_of} from {limits.min} to {limits.max} (its default is {limits.default}).")
        return size

    def check_intervals(self, intervals: Intervals) -> Intervals:
        for name in ("sample", "invert"):
            value = getattr(intervals, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
                raise SvdeditError(f"the step-cache interval ({name}) must be a whole number from 1 to 1000, not {value!r}.")
        if intervals != Intervals() and not self.manifest.split_unet:
            raise SvdeditError(f"{self.engine_dir} was exported without step caching, so its UNet cannot skip its deep "
                               f"branch: use a cache interval of 1, or export the model again with step caching.")
        return intervals

    @contextmanager
    def using(self, intervals: Intervals):
        """Run with other step-cache intervals inside the block (the service sets each batch's)."""
        before, self.intervals = self.intervals, self.check_intervals(intervals)
        try:
            yield self
        finally:
            self.intervals = before

    def unet_fn(self, interval: int = 1) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
        """The UNet as one function (x, timesteps, text) -> model output, for one run of steps. With a split UNet it
        keeps the deep feature: a call computes it when its index in the run is a multiple of `interval` (or the
        batch changed), and the calls between reuse it."""
        inputs = self.conditioning_feeds()
        if not self.manifest.split_unet:
            unet = self.engines["unet"]
            return lambda x, ts, e: unet(sample=x, timestep=ts, **inputs(x, e))["model_output"]
        first, deep_net, last = (self.engines[n] for n in ("unet_in", "unet_deep", "unet_out"))
        state = {"calls": 0, "deep": None}

        def call(x, ts, cond):
            feeds = inputs(x, cond)
            e = feeds["encoder_hidden_states"]
            a = first(sample=x, timestep=ts, **feeds)
            deep = state["deep"]
            if state["calls"] % interval == 0 or deep is None or deep.shape[0] != x.shape[0]:
                deep = state["deep"] = deep_net(hidden=a["hidden"], emb=a["emb"], encoder_hidden_states=e)["deep"]
            state["calls"] += 1
            return last(deep=deep, skips=a["skips"], emb=a["emb"], encoder_hidden_states=e)["model_output"]
        return call

    def conditioning_feeds(self) -> Callable[[object, np.ndarray], dict]:
        """(x, text embeddings) -> the UNet's inputs besides sample and timestep, on the latents' device. Made from the
        host's embeddings (conditioning.unet_inputs) once for each embedding and latent shape of a run, and moved to
        the device then, not at every step."""
        made: dict = {}

        def feeds(x, cond):
            if made.get("for") is not cond or made["shape"] != x.shape:
                xp = array_module(x)
                made.update({"for": cond, "shape": x.shape, "feeds": {
                    k: xp.asarray(v) for k, v in self.conditioning.unet_inputs(x, cond).items()}})
            return made["feeds"]
        return feeds

    @property
    def providers(self) -> dict[str, str]:
        """What runs each network: the onnxruntime provider its session really got (after any silent fallback),
        or "TensorRT"."""
        return {name: runner.provider for name, runner in self.engines.items()}

    # ---- text ----
    def encode_prompt(self, prompts: list[str]) -> np.ndarray:
        """The conditioning arrays of `prompts` (conditioning.py): (B, L, D), SDXL (B, L + 1, D)."""
        return self.conditioning.encode(prompts)

    def for_images(self, cond: np.ndarray, originals) -> np.ndarray:
        """`cond` for images that fit() made from originals of these (width, height): SDXL's size conditioning of
        each (images.size_conditioning); unchanged for the other families, or without `originals`."""
        if originals is None or not self.manifest.is_xl:
            return cond
        from svdedit.runtime.images import size_conditioning

        return self.conditioning.with_time_ids(cond, [size_conditioning(w, h, self.size) for w, h in originals])

    @functools.cached_property
    def unconditional_embedding(self) -> np.ndarray:
        """The empty prompt's embedding (1, L, D) (SDXL: zeros, as its config says): made once, reused by every
        guided eps_fn."""
        return self.conditioning.unconditional()

    def eps_fn(self, cond: np.ndarray, guidance: float, interval: int = 1) -> ddim.EpsFn:
        """The model as the sampler sees it, for text embeddings (B, L, D) (those of prompts, or a blend of two).
        With guidance != 1, uncond and cond go in one UNet call. `interval`: step caching (unet_fn)."""
        unet = self.unet_fn(interval)
        if guidance == 1.0:
            def eps(x, t):
                return unet(x, array_module(x).full((x.shape[0],), t, np.float32), cond)
            return eps
        n = len(cond)
        uncond = self.conditioning.paired(self.unconditional_embedding, cond)
        both = np.ascontiguousarray(np.concatenate([uncond, cond]), dtype=np.float32)
        g = np.float32(guidance)

        def eps_guided(x, t):
            xp = array_module(x)
            x2 = xp.concatenate([x, x])
            ts = xp.full((2 * n,), t, np.float32)
            out = unet(x2, ts, both)
            out_uncond, out_cond = out[:n], out[n:]
            return out_uncond + g * (out_cond - out_uncond)  # classifier-free guidance (Ho & Salimans 2022)
        return eps_guided

    # ---- latents ----
    def noise(self, seed: int, batch: int = 1, size: int | None = None) -> np.ndarray:
        side = (size or self.size) // self.vae_factor
        return np.random.default_rng(seed).standard_normal((batch, self.channels, side, side)).astype(np.float32)

    # ---- the DDIM driver ----
    def denoise(self, x: np.ndarray, cond: np.ndarray, steps: int, guidance: float, start: int = 0,
                stop: int | None = None, keep=(), progress: Progress | None = None) -> Denoised:
        """DDIM with text embeddings `cond` from step index `start` (x sits at that step's noise level) to `stop`
        (default: the end); also returns the latents at the step indices in `keep`."""
        stop = steps if stop is None else stop
        kept = {i: x for i in keep if i == start}
        guard = self._guard(stop - start, progress, offset=start)

        def callback(i, t, xi):
            guard(i, t, xi)
            if i + 1 in keep:
                kept[i + 1] = to_host(xi)
        with _overflow_is_reported_by_the_guard():
            x = ddim.sample(self.eps_fn(cond, guidance, self.intervals.sample), self.xp.asarray(x), self.schedule,
                            steps, start=start, stop=stop, callback=callback)
        return Denoised(to_host(x), kept)

    def invert_latents(self, latent0: np.ndarray, cond: np.ndarray, steps: int, guidance: float = 1.0,
                       progress: Progress | None = None) -> list[np.ndarray]:
        """DDIM inversion with text embeddings `cond`: the trajectory [z_0, ..., z_T] (ddim.invert)."""
        with _overflow_is_reported_by_the_guard():
            trajectory = ddim.invert(self.eps_fn(cond, guidance, self.intervals.invert), self.xp.asarray(latent0),
                                     self.schedule, steps, callback=self._guard(steps, progress))
        return [latent0, *map(to_host, trajectory[1:])]

    def _guard(self, steps: int, progress: Progress | None, offset: int = 0) -> ddim.Callback:
        """The callback of every DDIM run: stop at the first NaN or inf, naming the step; report progress."""
        def callback(i, t, x):
            if not bool(array_module(x).isfinite(x).all()):
                raise NonFiniteLatentError(
                    f"NaN or inf appeared in the latents at step {i + 1} (timestep {t}). With an fp16 engine this is "
                    f"usually an overflow: export the model again in fp32 precision, or use a smaller guidance scale.")
            if progress is not None:
                progress(i + 1 - offset, steps)
        return callback

    # ---- prompts in, latents out ----
    def generate(self, prompt: str | list[str], seed: int = 0, steps: int = 50, guidance: float = 7.5,
                 init_noise: np.ndarray | None = None, progress: Progress | None = None) -> np.ndarray:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        x = self.noise(seed, len(prompts)) if init_noise is None else self.check_latent(init_noise, len(prompts))
        return self.sample(x, prompts, steps=steps, guidance=guidance, progress=progress)

    def sample(self, latent: np.ndarray, prompt: str | list[str], steps: int = 50, guidance: float = 7.5,
               start: int = 0, progress: Progress | None = None, originals=None) -> np.ndarray:
        """Continue denoising `latent`, which sits at the noise level of sampling step index `start` (`originals`: as
        for invert)."""
        prompts = [prompt] * len(latent) if isinstance(prompt, str) else list(prompt)
        cond = self.for_images(self.encode_prompt(prompts), originals)
        return self.denoise(latent, cond, steps, guidance, start=start, progress=progress).latent

    def invert(self, latent0: np.ndarray, prompt: str | list[str], steps: int = 50, guidance: float = 1.0,
               progress: Progress | None = None, originals=None) -> list[np.ndarray]:
        """DDIM-invert latents; `originals`: the (width, height) each image had before fit() (SDXL's size
        conditioning, for_images)."""
        prompts = [prompt] * len(latent0) if isinstance(prompt, str) else list(prompt)
        return self.invert_latents(latent0, self.for_images(self.encode_prompt(prompts), originals), steps, guidance,
                                   progress)

    def check_latent(self, x: np.ndarray, batch: int) -> np.ndarray:
        """A user-supplied latent (e.g. --init-noise) as float32 (batch, C, h, w), or a clear error."""
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[None]
        step = self.manifest.image_size.multiple_of // self.vae_factor  # latent sides must be multiples
        shape_ok = x.ndim == 4 and x.shape[0] in (1, batch) and x.shape[1] == self.channels
        if not shape_ok or x.shape[2] % step or x.shape[3] % step:
            side = self.size // self.vae_factor
            raise SvdeditError(f"initial noise has shape {x.shape}; this model wants ({batch}, {self.channels}, h, w) "
                               f"with h and w multiples of {step} (e.g. {side}x{side}).")
        if not np.all(np.isfinite(x)):
            raise SvdeditError("initial noise contains NaN or inf.")
        return np.ascontiguousarray(np.broadcast_to(x, (batch, *x.shape[1:])), dtype=np.float32)

    # ---- pixels ----
    def encode(self, images: np.ndarray) -> np.ndarray:
        """float32 (B, 3, H, W) in [-1, 1] -> latents (the VAE's posterior mean times the scaling factor)."""
        return self.engines["vae_encoder"](image=np.ascontiguousarray(images, np.float32))["latent_mean"] * np.float32(self.scaling)

    def decode(self, latent: np.ndarray) -> np.ndarray:
        """latents -> float32 images (B, 3, H, W), about [-1, 1]."""
        return self.engines["vae_decoder"](latent=np.ascontiguousarray(latent / np.float32(self.scaling)))["image"]


def _overflow_is_reported_by_the_guard():
    """NumPy's own overflow warnings would precede NonFiniteLatentError, which already names the step."""
    return np.errstate(over="ignore", invalid="ignore")
