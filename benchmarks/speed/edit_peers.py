"""The implementations `benchmarks/speed/bench_edit.py` and `bench_speed.py` measure, each run in its own child
process: svdedit (Editor.edit_images, the product's path), diffusers (torch), Optimum's onnxruntime pipeline and
optimum-intel's OpenVINO pipeline doing the same edit, with the same inputs, per stage (runtime.timing.EDIT_STAGES);
and OpenVINO GenAI's Text2ImagePipeline, which cannot invert an image, timed generating at the same steps."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from svdedit.runtime.timing import EDIT_STAGES

# prompts of the edited images (the attribute's word change, red -> blue, applies to each)
PROMPTS = ["a small red square on the left", "a large red triangle on the right", "a small red circle in the middle",
           "a large red square in the middle", "a small red triangle on the right", "a large red circle on the left",
           "a small red square on the right", "a large red triangle in the middle"]

# ------------------------------------------------------------------------------------------------
# inputs shared by both implementations
# ------------------------------------------------------------------------------------------------
def images(n: int, size: int) -> np.ndarray:
    """n rendered shapes images (red, so that red -> blue applies), float32 (n, 3, size, size) in [-1, 1]."""
    from PIL import Image

    from models.shapes_data import parse_caption, render

    rng = np.random.default_rng(7)
    out = []
    for p in PROMPTS[:n] if n <= len(PROMPTS) else (PROMPTS * (n // len(PROMPTS) + 1))[:n]:
        img = Image.fromarray(render(parse_caption(p), rng)).resize((size, size), Image.LANCZOS)
        out.append(np.asarray(img, np.float32).transpose(2, 0, 1) / 127.5 - 1)
    return np.stack(out)


def prompts(n: int) -> list[str]:
    return (PROMPTS * (n // len(PROMPTS) + 1))[:n]


class PeakDeviceMemory:
    """Peak GPU memory of this process, polled from nvidia-smi every 20 ms (None without a GPU)."""

    def __init__(self) -> None:
        self.peak_mib: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        pid = str(os.getpid())
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
            except (OSError, subprocess.SubprocessError):
                return
            for line in out.splitlines():
                p, _, mib = line.partition(",")
                if p.strip() == pid:
                    self.peak_mib = max(self.peak_mib or 0, int(mib))
            self._stop.wait(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------------------------
# the implementations, each run in a child process
# ------------------------------------------------------------------------------------------------
class Svdedit:
    name = "svdedit (onnxruntime)"

    def __init__(self, spec: dict):
        from svdedit.runtime.editing.avi import Attribute
        from svdedit.runtime.editing.edit import Editor
        from svdedit.runtime.pipeline import Pipeline
        from svdedit.runtime.timing import Stages

        if spec["provider"] == "openvino":
            self.name = "svdedit (OpenVINO)"
        self.pipe = Pipeline(spec["engine"], spec["provider"], size=spec.get("size"),
                             precision=spec.get("run_precision")).__enter__()
        self.stages = Stages()
        self.editor = Editor(self.pipe, stages=self.stages)
        self.attr = Attribute.load(spec["attr"])
        self.size = self.pipe.size
        providers = self.pipe.providers
        self.provider = providers.get("unet") or providers["unet_deep"]  # a whole UNet, or a split one

    def edit(self, imgs: np.ndarray, ps: list[str]) -> np.ndarray:
        r = self.editor.edit_images([self.attr], imgs, ps, batch=len(imgs))
        return r.edited


class Diffusers:
    name = "diffusers (torch)"

    def __init__(self, spec: dict):
        import torch
        from diffusers import DDIMInverseScheduler, DDIMScheduler

        from svdedit.runtime import ddim
        from svdedit.runtime.editing.avi import Attribute
        from svdedit.runtime.engines.manifest import read_manifest
        from svdedit.runtime.timing import Stages

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dtype = torch.float16 if spec["precision"] == "fp16" and self.device == "cuda" else torch.float32
        self.ref = ref = self.load(spec)
        self.sched = DDIMScheduler.from_config(ref.scheduler.config)
        self.inverse = DDIMInverseScheduler.from_config(ref.scheduler.config)
        self.attr = Attribute.load(spec["attr"])
        manifest = read_manifest(spec["engine"], verify="none")
        self.schedule = ddim.Schedule.from_json(Path(spec["engine"]) / manifest.schedule.file)
        self.vae_factor = manifest.latent.vae_scale_factor
        self.stages = Stages()
        self.size = spec.get("size") or manifest.image_size.default
        self.provider = getattr(self, "provider_label", None) or \
            f"torch {torch.__version__} {self.device} ({torch.get_num_threads()} threads)"

    def load(self, spec: dict):
        from diffusers import StableDiffusionPipeline

        ref = StableDiffusionPipeline.from_pretrained(spec["pipeline"], torch_dtype=self.dtype, safety_checker=None,
                                                      requires_safety_checker=False, local_files_only=True)
        return ref.to(self.device)

    # the model family's text conditioning and UNet call (SD 1/2 here; SDXL in DiffusersXL)
    def encode(self, ps: list[str]):
        return self.ref.encode_prompt(ps, self.device, 1, False)[0]

    def unconditional(self, like, n: int):
        return self.encode([""] * n)

    def join(self, a, b):
        return self.torch.cat([a, b])

    def eps(self, z, t, cond):
        return self.ref.unet(z, t, cond).sample

    def _sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def edit(self, imgs: np.ndarray, ps: list[str]) -> np.ndarray:
        from svdedit.runtime.editing import avi
        from svdedit.runtime.editing.edit import Editor, edit_step
        from svdedit.runtime.images import to_uint8

        torch, ref, st, knobs = self.torch, self.ref, self.stages, self.attr.knobs
        steps, n, sf = knobs.steps, len(imgs), ref.vae.config.scaling_factor
        tgts = Editor.targets([self.attr], ps)
        i_x, i_z = edit_step(self.schedule, knobs)
        g = knobs.guidance
        with torch.no_grad():
            with st("text"):
                e_src = self.encode(ps)
                e_tgt = self.encode(tgts)
                unc = self.unconditional(e_tgt, n)
                self._sync()
            with st("vae_encode"):
                x0 = torch.from_numpy(imgs).to(self.device, self.dtype)
                z = ref.vae.encode(x0).latent_dist.mean * sf
                self._sync()
            with st("invert"):
                self.inverse.set_timesteps(steps)
                traj = [z]
                for t in self.inverse.timesteps:
                    z = self.inverse.step(self.eps(z, t, e_src), t, z).prev_sample
                    traj.append(z)
                self._sync()
            x = traj[steps - i_x]

            def guided(z, cond, start, stop):
                self.sched.set_timesteps(steps)
                both = self.join(unc, cond)
                for t in self.sched.timesteps[start:stop]:
                    out = self.eps(torch.cat([z, z]), t, both)
                    u, c = out.chunk(2)
                    z = self.sched.step(u + g * (c - u), t, z).prev_sample
                return z

            with st("sample_to_edit"):
                zz = guided(traj[-1], e_tgt, 0, i_z)
                self._sync()
            with st("svd_avi"):
                xn, zn = (a.float().cpu().numpy() for a in (x, zz))
                pair = avi.decompose(xn, zn, knobs.k, knobs.tail)
                y = torch.from_numpy(avi.apply(self.attr.params, pair, 1.0)).to(self.device, self.dtype)
            with st("sample_rest"):
                y = guided(y, e_tgt, i_x, steps)  # strength 1: the continuation is the target's embedding
                self._sync()
            with st("vae_decode"):
                out = ref.vae.decode(y / sf).sample.float().cpu().numpy()
        return to_uint8(out)


class DiffusersXL(Diffusers):
    """The diffusers peer on SDXL: both encoders' penultimate hidden states and the pooled vector
    (StableDiffusionXLPipeline.encode_prompt), zeros as the unconditional input (force_zeros_for_empty_prompt),
    and the image's own size as the time ids (original = target = the edited size, no crop), as svdedit's."""

    def __init__(self, spec: dict):
        index = json.loads((Path(spec["pipeline"]) / "model_index.json").read_text())
        self.force_zeros = index.get("force_zeros_for_empty_prompt", True)  # diffusers' default
        super().__init__(spec)

    def load(self, spec: dict):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline.from_pretrained(spec["pipeline"], torch_dtype=self.dtype,
                                                         local_files_only=True).to(self.device)

    def encode(self, ps: list[str]):
        hidden, _, pooled, _ = self.ref.encode_prompt(ps, device=self.device, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False)
        return hidden, pooled

    def unconditional(self, like, n: int):
        if self.force_zeros:
            return tuple(self.torch.zeros_like(a) for a in like)
        return self.encode([""] * n)

    def join(self, a, b):
        return tuple(self.torch.cat([x, y]) for x, y in zip(a, b))

    def eps(self, z, t, cond):
        hidden, pooled = cond
        h, w = (side * self.vae_factor for side in z.shape[-2:])
        time_ids = self.torch.tensor([[h, w, 0, 0, h, w]], dtype=hidden.dtype, device=z.device).repeat(len(z), 1)
        return self.ref.unet(z, t, hidden, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample


class Optimum(Diffusers):
    """Optimum's onnxruntime pipeline (ORTStableDiffusionPipeline, its own export, its own venv: facts.md),
    driven by the same loop as the diffusers peer (its components take and return torch tensors)."""

    name = "optimum (onnxruntime)"
    pipeline_class = "ORTStableDiffusionPipeline"

    def load(self, spec: dict):
        import optimum.onnxruntime as ortopt

        from importlib.metadata import version

        provider = "CUDAExecutionProvider" if self.device == "cuda" else "CPUExecutionProvider"
        self.provider_label = f"optimum-onnx {version('optimum-onnx')}, onnxruntime {version('onnxruntime')} {provider}"
        return getattr(ortopt, self.pipeline_class).from_pretrained(spec["optimum"], provider=provider)


class OptimumIntel(Optimum):
    """optimum-intel's OpenVINO pipeline (OVStableDiffusionPipeline, its own export and venv: peer_venvs.sh),
    driven by the same loop (its components take and return torch tensors). spec["precision"] "default": its
    defaults (OpenVINO's CPU plugin: bf16 where the CPU has bf16 units); "fp32": forced to f32."""

    name = "optimum-intel (OpenVINO)"
    pipeline_class = "OVStableDiffusionPipeline"

    def eps(self, z, t, cond):  # its UNet's output is named out_sample (its export's name), not sample
        return self.ref.unet(z, t, cond)[0]

    def load(self, spec: dict):
        from importlib.metadata import version

        import openvino
        from optimum import intel

        extra = {"ov_config": {"INFERENCE_PRECISION_HINT": "f32"}} if spec["precision"] == "fp32" else {}
        pipe = getattr(intel, self.pipeline_class).from_pretrained(spec["optimum_intel"], **extra)
        pipe.compile()
        hint = pipe.unet.request.get_property("INFERENCE_PRECISION_HINT")
        self.provider_label = (f"optimum-intel {version('optimum-intel')}, OpenVINO {openvino.__version__.split('-')[0]}"
                               f" CPU {hint}")
        return pipe


def svdedit_generation(spec: dict) -> dict:
    """svdedit's generation (Pipeline.generate, then decode) at the same steps as genai_generation, for its ratio."""
    from svdedit.runtime.pipeline import Pipeline

    t0 = time.perf_counter()
    with Pipeline(spec["engine"], spec["provider"], precision=spec.get("run_precision")) as pipe:
        load_s = time.perf_counter() - t0
        pipe.decode(pipe.generate(PROMPTS[0], steps=2, guidance=spec["guidance"]))  # warm-up
        times = []
        for _ in range(spec["repeats"]):
            t = time.perf_counter()
            image = pipe.decode(pipe.generate(PROMPTS[0], steps=spec["steps"], guidance=spec["guidance"]))
            times.append(time.perf_counter() - t)
        provider = pipe.providers.get("unet") or pipe.providers["unet_deep"]
    np.save(spec["out"], image)
    return {"impl": "svdedit generate", "load_s": load_s, "provider": provider,
            "seconds_median": statistics.median(times), "seconds_runs": [round(t, 3) for t in times],
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def genai_generation(spec: dict) -> dict:
    """OpenVINO GenAI's Text2ImagePipeline on optimum-intel's export: it has no inversion, so it generates at the
    edit's guided step count and guidance (a warm-up, then the median of spec["repeats"]), with its defaults."""
    import openvino
    import openvino_genai

    from importlib.metadata import version

    t0 = time.perf_counter()
    pipe = openvino_genai.Text2ImagePipeline(spec["optimum_intel"], "CPU")
    load_s = time.perf_counter() - t0
    size, kw = spec["size"], dict(num_inference_steps=spec["steps"], guidance_scale=spec["guidance"])
    pipe.generate(PROMPTS[0], width=size, height=size, **{**kw, "num_inference_steps": 2})  # warm-up
    times = []
    for _ in range(spec["repeats"]):
        t = time.perf_counter()
        image = pipe.generate(PROMPTS[0], width=size, height=size, **kw)
        times.append(time.perf_counter() - t)
    np.save(spec["out"], np.asarray(image.data))
    return {"impl": "OpenVINO GenAI (Text2ImagePipeline)", "load_s": load_s,
            "provider": f"openvino-genai {version('openvino-genai')}, OpenVINO {openvino.__version__.split('-')[0]} CPU",
            "seconds_median": statistics.median(times), "seconds_runs": [round(t, 3) for t in times],
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


class OptimumXL(Optimum, DiffusersXL):
    """Optimum's SDXL pipeline (ORTStableDiffusionXLPipeline), driven by DiffusersXL's loop."""

    pipeline_class = "ORTStableDiffusionXLPipeline"


#: {name: (the implementation for SD 1/2, the one for SDXL)}
IMPLEMENTATIONS = {"svdedit": (Svdedit, Svdedit), "diffusers": (Diffusers, DiffusersXL),
                   "optimum": (Optimum, OptimumXL), "optimum-intel": (OptimumIntel, None)}


def child(impl: str, spec: dict) -> dict:
    """Load one implementation, warm it up, time it; print one JSON line."""
    t0 = time.perf_counter()
    with PeakDeviceMemory() as vram:
        runner = IMPLEMENTATIONS[impl][bool(spec.get("xl"))](spec)
        load_s = time.perf_counter() - t0
        rows, first = [], None
        for b in spec["batches"]:
            imgs, ps = images(b, runner.size), prompts(b)
            out = runner.edit(imgs, ps)  # warm-up at this batch size
            if first is None:
                first = out
            runs = []
            for _ in range(spec["repeats"]):
                runner.stages.reset()
                t = time.perf_counter()
                runner.edit(imgs, ps)
                runs.append((time.perf_counter() - t, dict(runner.stages.seconds)))
            total = statistics.median(r[0] for r in runs)
            rows.append({
                "batch": b, "seconds_median": total, "seconds_runs": [round(r[0], 4) for r in runs],
                "edits_per_second": b / total, "seconds_per_edit": total / b,
                "stages_median_s": {s: statistics.median(r[1].get(s, 0.0) for r in runs) for s in EDIT_STAGES},
            })
    np.save(spec["out"] + f".{impl}.npy", first)
    return {"impl": runner.name, "provider": runner.provider, "load_s": load_s, "batches": rows,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "peak_device_mib": vram.peak_mib}


