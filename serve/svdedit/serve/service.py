"""The service's model work, without HTTP: one open Pipeline, the attribute store, and batches of edit jobs.

    service = EditService(ServeSettings(engine_dir))
    service.open()                                  # the engines, once per process
    job = service.edit_job(EditRequest((attribute_id,), prompt, seeds=(1, 2), strengths=(0.8,)))   # checked
    outcomes = service.run_batch([job, other_job])  # one batch: shared UNet calls where the knobs agree

The requests are the runtime's own values (runtime/svdedit/runtime/editing/request.py), checked here
against this service's limits before anything waits in a queue.

LoRA adapters (settings.lora, `svdedit serve --lora NAME=FILE`): each is a Pipeline of its own beside the
engine as exported, opened with the service (its merge cached per user: runtime/svdedit/runtime/engines/
lora.py), sharing the base pipeline's runners for the networks it leaves unchanged. A request names its
adapter in `lora` (none: the engine as exported); jobs of different adapters never share a batch, and an
attribute is edited with the adapter it was learned with (its engine identity includes the adapter).

`run_batch` is what both front ends feed: the local micro-batcher under uvicorn (batching.py) and
Ray Serve's @serve.batch (ray_app.py). Jobs whose attributes share the knobs of the edit
(Knobs.edit_key) and their kind (seeds or an image) go into one Editor call with a Recipe per image;
if that call fails (a NaN in one image, or any other error), each of its jobs is run again alone,
so that only the one at fault fails and the others, from other clients, get their edits (a bug is
logged, with its traceback, where its request is answered: app.py, ray_app.py). Everything here is
synchronous and runs on the front end's one worker thread.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from svdedit.runtime.editing.cache import EditCache
from svdedit.runtime.editing.edit import Editor, Recipe
from svdedit.runtime.editing.learn import learn
from svdedit.runtime.editing.request import EditRequest, GenerateRequest, LearnRequest
from svdedit.runtime.engines import Manifest
from svdedit.runtime.engines.lora import read_adapter
from svdedit.runtime.errors import AttributeFileError, InvalidRequestError, SvdeditError
from svdedit.runtime.images import decode_image, encode_png, fit, to_uint8
from svdedit.runtime.pipeline import Intervals, Pipeline
from svdedit.runtime.timing import Stages
from svdedit.serve.settings import ServeSettings, default_store_root
from svdedit.serve.store import AttributeStore

log = logging.getLogger("svdedit.serve")


@dataclass
class EditJob:
    """One request's edit: its images (seeds, or one uploaded image) and what they get."""

    recipe: Recipe
    prompt: str
    target_prompt: str | None          # None: an image without a usable caption (Editor.edit_images_with)
    seeds: list[int] | None = None
    image: np.ndarray | None = None    # float32 (3, H, W) in [-1, 1], fitted to the model's size
    original: tuple[int, int] | None = None  # the image's (width, height) before it was fitted (SDXL's size conditioning)
    intervals: Intervals = Intervals()  # step caching: only jobs with the same intervals share a batch
    lora: str | None = None            # the adapter's name (None: the engine as exported); only the same share a batch

    @property
    def n_images(self) -> int:
        return len(self.seeds) if self.seeds is not None else 1

    def batch_key(self) -> tuple:
        """Jobs with the same key can share one batch."""
        return ("seeds" if self.seeds is not None else "image", self.intervals, self.lora) + \
            self.recipe.attributes[0].knobs.edit_key()


@dataclass
class EditOutcome:
    edited: list[bytes]                # PNG per image
    sources: list[bytes] | None        # PNG per image, for seeds (the generated source)
    target_prompts: list[str]
    seconds_per_stage: dict[str, float]  # of the batch the job ran in
    batch_images: int                  # images in that batch


class EditService:
    def __init__(self, settings: ServeSettings):
        self.settings = settings.check()
        self.limits = settings.request_limits()
        self.pipe: Pipeline | None = None  # the engine as exported
        #: every open pipeline by its adapter's name: None (the engine as exported, `pipe`), then settings.lora's
        self.pipes: dict[str | None, Pipeline] = {}
        self.store: AttributeStore | None = None
        #: each image's inversion and pair, reused by the next edit of the same image (strength slider)
        self.cache = EditCache(settings.edit_cache_mb << 20) if settings.edit_cache_mb else None
        self._opened = threading.Event()

    # ---- lifecycle ----
    def open(self, manifest: Manifest | None = None) -> "EditService":
        """Load the engines, and each adapter's (`manifest`: the engine dir's, if the caller has read it already)."""
        s = self.settings
        pipe = Pipeline(s.engine_dir, s.provider, manifest=manifest, precision=s.precision).__enter__()
        self.pipes = {None: pipe}
        try:
            for name, file, scale in s.lora:
                self.pipes[name] = Pipeline(s.engine_dir, s.provider, manifest=pipe.manifest, precision=s.precision,
                                            lora=[read_adapter(file, scale)], share=pipe).__enter__()
                log.info("adapter %r (%s) open; its own networks: %s", name, self.pipes[name].adapters[0],
                         sorted(set(pipe.engines) - self.pipes[name].borrowed) or "none")
        except BaseException:
            self.close_pipes()
            raise
        adapter_of: dict[str, str | None] = {}  # engine identity -> adapter (the engine as exported first: an adapter
        for name, p in self.pipes.items():      # at scale 0 has its identity)
            for identity in p.manifest.identities():
                adapter_of.setdefault(identity, name)
        ids = pipe.manifest.identities()
        self.store = AttributeStore(s.store or default_store_root() / ids[0][:16], adapter_of)
        self.pipe = pipe
        self._opened.set()
        log.info("engines of %s open on %s; attribute store %s", s.engine_dir, pipe.providers, self.store.folder)
        return self

    def close(self) -> None:
        self._opened.clear()
        self.close_pipes()

    def close_pipes(self) -> None:
        """Leave every open pipeline: the adapters' first (they run some networks on the base pipeline's runners)."""
        for name in reversed(list(self.pipes)):
            self.pipes.pop(name).__exit__(None, None, None)
        self.pipe = None

    @property
    def ready(self) -> bool:
        return self._opened.is_set()

    def _require_ready(self) -> None:
        if not self.ready:
            from svdedit.runtime.errors import BusyError

            raise BusyError("the engines are still loading; try again in a few seconds.", retry_after_s=2.0)

    # ---- requests into jobs (validated before they wait in a queue) ----
    def edit_job(self, request: EditRequest) -> EditJob:
        """The request checked (its fields against this service's limits; its attributes against the store and
        each other; its image decoded), as a job ready to batch; InvalidRequestError (naming the field),
        NotFoundError or ImageTooLargeError otherwise."""
        self._require_ready()
        request = request.check(self.limits)
        pipe = self.pipe_for(request.lora)
        if len(request.strengths) != 1:
            raise InvalidRequestError("strengths", "{field}: one strength per request (send one request per strength: "
                                                   "the edit cache makes each after the first cheap).")
        attrs = tuple(self.store.get(a) for a in request.attributes)
        for attr_id, attr in zip(request.attributes, attrs):
            self.check_adapter(attr_id, attr.engine, request.lora)
        recipe = Recipe(attrs, request.strengths[0])
        try:
            Editor(pipe).check([recipe])  # attributes that cannot be combined fail here, not in a batch
        except InvalidRequestError:
            raise
        except SvdeditError as exc:
            raise InvalidRequestError("attributes", str(exc)) from None
        target_prompt = request.target_prompt
        if target_prompt is None:
            try:
                target_prompt = Editor.targets(attrs, [request.prompt])[0]
            except SvdeditError as exc:  # a prompt without the attribute's word: fine for an image, not for seeds
                if request.seeds is not None:
                    raise InvalidRequestError("prompt", str(exc)) from None
        fitted = original = None
        if request.images is not None:
            image = request.images[0]
            if len(image) > self.limits.max_file_bytes:
                raise InvalidRequestError("images", f"the image is {len(image)} bytes; the limit is "
                                                    f"{self.limits.max_file_bytes} bytes.")
            decoded = decode_image(image, "the uploaded image", self.limits)
            fitted, original = fit(decoded, pipe.size), decoded.size
        return EditJob(recipe, request.prompt, target_prompt, list(request.seeds) if request.seeds is not None else None,
                       fitted, original, self._intervals(pipe, request.cache_interval), request.lora)

    def pipe_for(self, name: str | None) -> Pipeline:
        """The pipeline of the adapter `name` (None: the engine as exported); InvalidRequestError for another name."""
        if name not in self.pipes:
            known = [n for n in self.pipes if n is not None]
            raise InvalidRequestError("lora", f"{{field}}: this service has no adapter {name!r}; " + (
                f"its adapters are {', '.join(map(repr, known))} (GET /v1/adapters), or leave {{field}} out for the "
                f"engine as exported." if known else "it was started without adapters (`svdedit serve ENGINE_DIR "
                                                     "--lora NAME=FILE` adds them); leave {field} out."))
        return self.pipes[name]

    def check_adapter(self, attr_id: str, engine: str, name: str | None) -> None:
        """An attribute is edited with the adapter it was learned with: AttributeFileError (409) naming it otherwise."""
        if engine not in self.pipes[name].manifest.identities():
            learned = self.store.adapter_of[engine]  # the store took it: it is one of this service's identities
            with_ = f"with adapter {learned!r}" if learned is not None else "on the engine without an adapter"
            send = f'send "lora": "{learned}"' if learned is not None else 'leave "lora" out'
            raise AttributeFileError(f"attribute {attr_id} was learned {with_}: {send} to edit with it (an attribute "
                                     f"belongs to the weights it was learned on).")

    def adapters(self) -> list[dict]:
        """The adapters a request may name: name, file, sha256, scale, layers, components."""
        self._require_ready()
        return [{"name": name, **p.adapters[0].record()} for name, p in self.pipes.items() if name is not None]

    def _intervals(self, pipe: Pipeline, cache_interval: int | None) -> Intervals:
        default = pipe.default_intervals
        if cache_interval is None:
            return default
        try:
            return pipe.check_intervals(Intervals(cache_interval, default.invert))
        except SvdeditError as exc:
            raise InvalidRequestError("cache_interval", str(exc)) from None

    # ---- the batched work ----
    def run_batch(self, jobs: Sequence[EditJob]) -> list[EditOutcome | Exception]:
        """One outcome per job, in order: an EditOutcome, or the exception that failed that job alone."""
        outcomes: list[EditOutcome | Exception | None] = [None] * len(jobs)
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.batch_key(), []).append(i)
        for members in groups.values():
            group = [jobs[i] for i in members]
            try:
                results = self._run_group(group)
            except Exception as exc:  # noqa: BLE001  (a user's error or a bug: either way, find the job at fault)
                if len(group) == 1:
                    results = [exc]
                else:  # each alone: only the job at fault fails, its neighbours get their edits
                    log.warning("a batch of %d jobs failed (%s: %s); running them one by one", len(group),
                                type(exc).__name__, exc)
                    results = [self._run_alone(job) for job in group]
            for i, result in zip(members, results):
                outcomes[i] = result
        return outcomes

    def _run_alone(self, job: EditJob) -> EditOutcome | Exception:
        try:
            return self._run_group([job])[0]
        except Exception as exc:  # noqa: BLE001  (reported to that job's request, as 4xx or 500)
            return exc

    def _run_group(self, group: list[EditJob]) -> list[EditOutcome]:
        stages = Stages()
        pipe = self.pipes[group[0].lora]
        editor = Editor(pipe, stages=stages, cache=self.cache)
        recipes = [j.recipe for j in group for _ in range(j.n_images)]
        prompts = [j.prompt for j in group for _ in range(j.n_images)]
        targets = [j.target_prompt for j in group for _ in range(j.n_images)]
        with pipe.using(group[0].intervals):
            if group[0].seeds is not None:
                seeds = [s for j in group for s in j.seeds]
                result = editor.edit_seeds_with(recipes, prompts, seeds, targets, batch=len(recipes))
            else:
                images = np.stack([j.image for j in group])
                result = editor.edit_images_with(recipes, images, prompts, targets, batch=len(recipes),
                                                 originals=[j.original for j in group])
        seconds = {k: round(v, 4) for k, v in stages.seconds.items()}
        out, at = [], 0
        for j in group:
            sl = slice(at, at + j.n_images)
            at += j.n_images
            out.append(EditOutcome([encode_png(im) for im in result.edited[sl]],
                                   [encode_png(im) for im in result.source[sl]] if j.seeds is not None else None,
                                   result.target_prompts[sl], seconds, len(recipes)))
        return out

    # ---- the rest ----
    def attributes(self) -> AttributeStore:
        self._require_ready()
        return self.store

    def learn(self, request: LearnRequest) -> dict:
        """Learn an attribute, store it, and describe it (with its id)."""
        self._require_ready()
        request = request.check(self.limits)
        attr = learn(Editor(self.pipe_for(request.lora)), request.source, request.target, seed=request.seed, knobs=request.knobs)
        return self.store.describe(self.store.save(attr))

    def generate(self, request: GenerateRequest) -> bytes:
        """Text to image (PNG)."""
        self._require_ready()
        r = request.check(self.limits)
        pipe = self.pipe_for(r.lora)
        latent = pipe.generate(r.prompt, seed=r.seed, steps=r.steps, guidance=r.guidance)
        return encode_png(to_uint8(pipe.decode(latent))[0])
