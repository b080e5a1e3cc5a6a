"""The service's model work, without HTTP: one open Pipeline, the attribute store, and batches of edit jobs.

    service = EditService(ServeSettings(engine_dir))
    service.open()                                  # the engines, once per process
    job = service.edit_job(EditRequestFields(prompt, [attribute_id], strength=0.8, seeds=[1, 2]))   # checked
    outcomes = service.run_batch([job, other_job])  # one batch: shared UNet calls where the knobs agree

`run_batch` is what both front ends feed: the local micro-batcher under uvicorn (batching.py) and
Ray Serve's @serve.batch (ray_app.py). Jobs whose attributes share the knobs of the edit
(Knobs.edit_key) and their kind (seeds or an image) go into one Editor call with a Recipe per image;
if that call fails with a user-facing error (a NaN in one image, say), each of its jobs is run
again alone, so that only the one at fault fails. Everything here is synchronous and runs on the
front end's one worker thread.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np

from svdedit.runtime.editing.cache import EditCache
from svdedit.runtime.editing.edit import Editor, Recipe
from svdedit.runtime.editing.knobs import Knobs
from svdedit.runtime.errors import InvalidRequestError, SvdeditError
from svdedit.runtime.images import decode_image, encode_png, fit, to_uint8
from svdedit.runtime.pipeline import Intervals, Pipeline
from svdedit.runtime.timing import Stages
from svdedit.serve.settings import ServeSettings, default_store_root
from svdedit.serve.store import AttributeStore

log = logging.getLogger("svdedit.serve")


@dataclass
class EditRequestFields:
    """An edit request as the client sent it (not yet checked)."""

    prompt: str
    attributes: list[str]
    strength: float = 1.0
    seeds: list[int] | None = None
    image: bytes | None = None         # the file's bytes
    target_prompt: str | None = None
    cache_interval: int | None = None  # step caching of sampling; None: the engine's own


@dataclass
class EditJob:
    """One request's edit: its images (seeds, or one uploaded image) and what they get."""

    recipe: Recipe
    prompt: str
    target_prompt: str | None          # None: an image without a usable caption (Editor.edit_images_with)
    seeds: list[int] | None = None
    image: np.ndarray | None = None    # float32 (3, H, W) in [-1, 1], fitted to the model's size
    intervals: Intervals = Intervals()  # step caching: only jobs with the same intervals share a batch

    @property
    def n_images(self) -> int:
        return len(self.seeds) if self.seeds is not None else 1

    def batch_key(self) -> tuple:
        """Jobs with the same key can share one batch."""
        return ("seeds" if self.seeds is not None else "image", self.intervals) + \
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
        self.pipe: Pipeline | None = None
        self.store: AttributeStore | None = None
        #: each image's inversion and pair, reused by the next edit of the same image (strength slider)
        self.cache = EditCache(settings.edit_cache_mb << 20) if settings.edit_cache_mb else None
        self._opened = threading.Event()

    # ---- lifecycle ----
    def open(self) -> "EditService":
        pipe = Pipeline(self.settings.engine_dir, self.settings.provider).__enter__()
        ids = pipe.manifest.identities()
        self.store = AttributeStore(self.settings.store or default_store_root() / ids[0][:16], ids)
        self.pipe = pipe
        self._opened.set()
        log.info("engines of %s open on %s; attribute store %s", self.settings.engine_dir, pipe.providers,
                 self.store.folder)
        return self

    def close(self) -> None:
        self._opened.clear()
        if self.pipe is not None:
            self.pipe.__exit__(None, None, None)
            self.pipe = None

    @property
    def ready(self) -> bool:
        return self._opened.is_set()

    def _require_ready(self) -> None:
        if not self.ready:
            from svdedit.runtime.errors import BusyError

            raise BusyError("the engines are still loading; try again in a few seconds.", retry_after_s=2.0)

    # ---- requests into jobs (validated before they wait in a queue) ----
    def edit_job(self, request: EditRequestFields) -> EditJob:
        """The request checked against the limits and the store, as a job ready to batch; InvalidRequestError
        (naming the field), NotFoundError or ImageTooLargeError otherwise."""
        self._require_ready()
        prompt, attribute_ids, strength = request.prompt, request.attributes, request.strength
        seeds, image, target_prompt = request.seeds, request.image, request.target_prompt
        s = self.settings
        self._check_prompt("prompt", prompt)
        if target_prompt is not None:
            self._check_prompt("target_prompt", target_prompt)
        if (seeds is None) == (image is None):
            raise InvalidRequestError("seeds", "give either seeds (to edit generated images) or an image, not both "
                                               "and not neither.")
        if seeds is not None and not prompt:
            raise InvalidRequestError("prompt", "seeds are generated from the prompt; give one (an image may come "
                                                "without a caption, seeds may not).")
        most = min(s.limits.max_seeds, s.max_queue)
        if seeds is not None and not 1 <= len(seeds) <= most:
            raise InvalidRequestError("seeds", f"{len(seeds)} seeds given; one request takes 1 to {most} "
                                               f"(send several requests for more).")
        if not np.isfinite(strength) or abs(strength) > 10:
            raise InvalidRequestError("strength", f"strength {strength} is out of range; give a number from -10 to 10 "
                                                  f"(0 = unchanged, 1 = the learned edit).")
        if not attribute_ids:
            raise InvalidRequestError("attributes", "give at least one attribute id (learn one with POST /v1/attributes).")
        attrs = tuple(self.store.get(a) for a in attribute_ids)
        recipe = Recipe(attrs, float(strength))
        try:
            Editor(self.pipe).check([recipe])  # attributes that cannot be combined fail here, not in a batch
        except InvalidRequestError:
            raise
        except SvdeditError as exc:
            raise InvalidRequestError("attributes", str(exc)) from None
        if target_prompt is None:
            try:
                target_prompt = Editor.targets(attrs, [prompt])[0]
            except SvdeditError as exc:  # a prompt without the attribute's word: fine for an image, not for seeds
                if seeds is not None:
                    raise InvalidRequestError("prompt", str(exc)) from None
        fitted = None
        if image is not None:
            if len(image) > s.limits.max_file_bytes:
                raise InvalidRequestError("image", f"the image is {len(image)} bytes; the limit is "
                                                   f"{s.limits.max_file_bytes} bytes.")
            fitted = fit(decode_image(image, "the uploaded image", s.limits), self.pipe.size)
        return EditJob(recipe, prompt, target_prompt, list(seeds) if seeds is not None else None, fitted,
                       self._intervals(request.cache_interval))

    def _intervals(self, cache_interval: int | None) -> Intervals:
        default = self.pipe.default_intervals
        if cache_interval is None:
            return default
        try:
            return self.pipe.check_intervals(Intervals(cache_interval, default.invert))
        except SvdeditError as exc:
            raise InvalidRequestError("cache_interval", str(exc)) from None

    def _check_prompt(self, field: str, prompt: str) -> None:
        if len(prompt) > self.settings.limits.max_prompt_chars:
            raise InvalidRequestError(field, f"the {field} is {len(prompt)} characters long; the limit is "
                                             f"{self.settings.limits.max_prompt_chars} (the text encoder reads 77 tokens).")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequestError(field, f"the {field} is not valid UTF-8 text.") from None

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
            except SvdeditError as exc:
                if len(group) == 1:
                    results = [exc]
                else:  # find the job at fault: each alone
                    log.warning("a batch of %d jobs failed (%s); running them one by one", len(group), exc)
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
        editor = Editor(self.pipe, stages=stages, cache=self.cache)
        recipes = [j.recipe for j in group for _ in range(j.n_images)]
        prompts = [j.prompt for j in group for _ in range(j.n_images)]
        targets = [j.target_prompt for j in group for _ in range(j.n_images)]
        with self.pipe.using(group[0].intervals):
            if group[0].seeds is not None:
                seeds = [s for j in group for s in j.seeds]
                result = editor.edit_seeds_with(recipes, prompts, seeds, targets, batch=len(recipes))
            else:
                images = np.stack([j.image for j in group])
                result = editor.edit_images_with(recipes, images, prompts, targets, batch=len(recipes))
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

    def learn(self, source: str, target: str, seed: int = 0, knobs: dict | None = None) -> dict:
        """Learn an attribute, store it, and describe it (with its id)."""
        self._require_ready()
        self._check_prompt("source", source)
        self._check_prompt("target", target)
        known = {f.name for f in fields(Knobs)}
        unknown = sorted(set(knobs or {}) - known)
        if unknown:
            raise InvalidRequestError("knobs", f"unknown knob(s) {', '.join(unknown)}; the knobs are "
                                               f"{', '.join(sorted(known))}.")
        try:
            k = Knobs(**(knobs or {})).check()
        except TypeError as exc:
            raise InvalidRequestError("knobs", f"a knob has a value of the wrong type ({exc}).") from None
        lim = self.settings.limits
        if k.steps > lim.max_steps or k.iters > lim.max_learn_iters:
            raise InvalidRequestError("knobs", f"steps {k.steps} / iters {k.iters}: this service allows at most "
                                               f"{lim.max_steps} steps and {lim.max_learn_iters} iters.")
        if not source.strip() or not target.strip() or source.split() == target.split():
            raise InvalidRequestError("target", "source and target must be two different, non-empty prompts: the "
                                                "attribute is what changes between them.")
        attr = Editor(self.pipe).learn(source, target, seed=seed, knobs=k)
        return self.store.describe(self.store.save(attr))

    def generate(self, prompt: str, seed: int = 0, steps: int = 50, guidance: float = 3.0) -> bytes:
        """Text to image (PNG)."""
        self._require_ready()
        self._check_prompt("prompt", prompt)
        if not 1 <= steps <= self.settings.limits.max_steps:
            raise InvalidRequestError("steps", f"steps {steps}: give 1 to {self.settings.limits.max_steps}.")
        if not 0 <= seed < 2**63 or not math.isfinite(guidance) or not 0 <= guidance <= 100:
            raise InvalidRequestError("seed" if not 0 <= seed < 2**63 else "guidance",
                                      f"seed {seed} / guidance {guidance}: a seed is 0 to 2**63 - 1, guidance 0 to 100.")
        latent = self.pipe.generate(prompt, seed=seed, steps=steps, guidance=guidance)
        return encode_png(to_uint8(self.pipe.decode(latent))[0])
