"""Editing through the engines: apply learned attributes (AVI) to generated and real images.

The story of one edit, top to bottom, as the public methods of ``Editor`` tell it (T_x = the step
nearest knobs.t_edit of the schedule, ``edit_step``):

    1. the source latent x_T: seeded noise (``edit_seeds``), or the DDIM inversion of an image with
       its prompt (``edit_images``);
    2. ``sample_pair``: sample the source prompt and the target prompt from the same x_T, in one
       batched UNet call per step, down to T_x (x) and T_x + dtau (z). For an image, ``invert_pair``:
       x is its own inversion at T_x, z the target prompt sampled from its inverted noise;
    3. ``inject``: decompose x and z channel-wise (kernels.channel_svd), let each attribute's MLP predict
       the singular values, rebuild y (runtime/svdedit/runtime/editing/avi.py), blend y(alpha) = x + alpha (y - x);
    4. ``finish``: continue denoising y(alpha) to the end. The continuation's text embedding is the
       source's blended towards the target's by the same alpha (knobs.continuation = "target", our
       default), or the source's alone (= "source", the paper's literal reading; measured in
       benchmarks/results/edit_quality.md to lose most edits). alpha = 0 reproduces the source image;
    5. decode.

``edit_latents`` is 3 + 4 for a pair already sampled (the benchmarks compare methods on one pair).
What each image gets is its ``Recipe`` (attributes and strength): the images of one batch may have
different ones (the server merges concurrent requests into one batch), as long as they share the
knobs of the edit (``Knobs.edit_key``).
The target prompt of a new image comes from its own prompt by the attribute's word change ("red" ->
"blue" turns "a small red square on the right" into "a small blue square on the right"), see
``retarget``; ``target_prompts=`` overrides it. Every sampling and inversion goes through the
Pipeline's DDIM driver (``Pipeline.denoise`` / ``invert_latents``), which stops at the first NaN.
With an ``EditCache`` (cache.py) steps 1 and 2 are kept per image: editing it again at another strength runs
3 to 5 only, with another attribute 2's z, 3, 4 and 5. Learning an attribute (the same steps 1 and 2 on
one pair, then the MLP's training and the strength calibration) is learn.py's story.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from svdedit.runtime import ddim
from svdedit.runtime.editing import avi
from svdedit.runtime.editing.avi import Attribute
from svdedit.runtime.editing.cache import EditCache, digest
from svdedit.runtime.editing.knobs import Knobs
from svdedit.runtime.errors import AttributeFileError, SvdeditError
from svdedit.runtime.images import to_uint8
from svdedit.runtime.pipeline import Pipeline
from svdedit.runtime.timing import NO_STAGES

Progress = Callable[[int, int], None]


def retarget(prompt: str, source: str, target: str) -> str:
    """Apply the word change source -> target to another prompt (difflib opcodes on words).

    Replaced and deleted words must occur in `prompt`; inserted words go before the word that follows
    the insertion in `source` (or at the end).
    """
    words, src, tgt = prompt.split(), source.split(), target.split()
    ops = [op for op in difflib.SequenceMatcher(a=src, b=tgt, autojunk=False).get_opcodes() if op[0] != "equal"]
    for tag, i1, i2, j1, j2 in reversed(ops):  # right to left, so earlier positions stay valid
        old, new = src[i1:i2], tgt[j1:j2]
        if tag in ("replace", "delete"):
            at = _find(words, old)
            if at is None:
                raise SvdeditError(f"the prompt {prompt!r} does not contain {' '.join(old)!r}, which the attribute changes "
                                   f"({source!r} -> {target!r}); give the target prompt explicitly (the request's "
                                   f"target_prompt).")
            words[at:at + len(old)] = new
        else:  # insert
            anchor = src[i1:i1 + 1]
            at = _find(words, anchor) if anchor else None
            words[len(words) if at is None else at:len(words) if at is None else at] = new
    return " ".join(words)


def _find(words: list[str], seq: list[str]) -> int | None:
    low = [w.lower() for w in words]
    seq = [w.lower() for w in seq]
    for i in range(len(words) - len(seq) + 1):
        if low[i:i + len(seq)] == seq:
            return i
    return None


def edit_step(schedule: ddim.Schedule, knobs: Knobs) -> tuple[int, int]:
    """Indices into the sampling timesteps of x (T_x) and z (T_x + dtau)."""
    i_x = ddim.step_nearest(schedule, knobs.steps, knobs.t_edit)
    i_z = i_x - knobs.dtau
    if not 0 <= i_z < knobs.steps:
        raise SvdeditError(f"dtau {knobs.dtau} puts z outside the {knobs.steps} steps (T_x is step {i_x}); learn the "
                           f"attribute again with a smaller dtau knob.")
    return i_x, i_z


@dataclass(frozen=True, eq=False)
class Recipe:
    """What one image of a batch gets: these attributes, at this strength (0 = unchanged, 1 = learned, >1 more)."""

    attributes: tuple[Attribute, ...]
    strength: float = 1.0

    @staticmethod
    def for_all(attrs: Sequence[Attribute], strength: float, n: int) -> list["Recipe"]:
        recipe = Recipe(tuple(attrs), float(strength))
        return [recipe] * n

    def same_as(self, other: "Recipe") -> bool:
        return (self.strength == other.strength and len(self.attributes) == len(other.attributes)
                and all(a is b for a, b in zip(self.attributes, other.attributes)))


def _runs(recipes: Sequence[Recipe]) -> list[tuple[int, int, Recipe]]:
    """(start, stop, recipe) of each run of consecutive images with the same recipe."""
    runs = []
    for i, r in enumerate(recipes):
        if runs and runs[-1][2].same_as(r):
            runs[-1] = (runs[-1][0], i + 1, r)
        else:
            runs.append((i, i + 1, r))
    return runs


@dataclass
class EditResult:
    source: np.ndarray            # uint8 (B, H, W, 3): the unedited image (generated, or the input as fitted)
    edited: np.ndarray            # uint8 (B, H, W, 3)
    source_prompts: list[str]
    target_prompts: list[str]     # as derived; for an image without a usable caption, what was done instead

#: what an image without a usable caption is edited towards, in words (EditResult.target_prompts)
UNCAPTIONED = "(no caption to rewrite: the caption's embedding moved by the attributes' own prompt pairs)"


class Editor:
    """Applying attributes through one open Pipeline (and the steps learn.py shares with it).

    `stages`: a runtime.timing.Stages to collect the wall time of each stage of an edit (text,
    vae_encode, invert, sample_to_edit, svd_avi, sample_rest, vae_decode); by default nothing is timed.
    `cache`: an EditCache (runtime/svdedit/runtime/editing/cache.py) that keeps each image's inversion and pair, so that
    editing it again (another strength, another attribute) runs only what changed; None: nothing is kept.
    """

    def __init__(self, pipe: Pipeline, stages=NO_STAGES, cache: EditCache | None = None):
        self.pipe = pipe
        self.stages = stages
        self.cache = cache
        #: what attribute files of this model are keyed on (the first: new ones; the second: svdedit 0.1.0's)
        self.engine_ids = pipe.manifest.identities()
        self.engine_hash = self.engine_ids[0]

    # ---- 2. the pair at T_x ----
    def sample_pair(self, x_T: np.ndarray, e_src: np.ndarray, e_tgt: np.ndarray, knobs: Knobs):
        """x at T_x (source prompt) and z at T_x + dtau (target prompt), sampled from the same x_T in one batch."""
        i_x, i_z = edit_step(self.pipe.schedule, knobs)
        n = len(x_T)
        with self.stages("sample_to_edit"):
            kept = self.pipe.denoise(np.concatenate([x_T, x_T]), np.concatenate([e_src, e_tgt]), knobs.steps,
                                     knobs.guidance, stop=max(i_x, i_z), keep=(i_x, i_z)).kept
        return kept[i_x][:n], kept[i_z][n:]

    def invert_pair(self, latent0: np.ndarray, e_src: np.ndarray, e_tgt: np.ndarray, knobs: Knobs):
        """For real images (latents `latent0`): x = their DDIM inversion at T_x, z = the target prompt sampled
        from their inverted noise down to T_x + dtau."""
        x, x_T = self.invert_to_edit(latent0, e_src, knobs)
        return x, self.sample_z(x_T, e_tgt, knobs)

    def invert_to_edit(self, latent0: np.ndarray, e_src: np.ndarray, knobs: Knobs):
        """The DDIM inversion of image latents with their prompts: (x at T_x, x_T at the end of the inversion)."""
        i_x, _ = edit_step(self.pipe.schedule, knobs)
        with self.stages("invert"):
            trajectory = self.pipe.invert_latents(latent0, e_src, knobs.steps, knobs.inversion_guidance)
        return trajectory[knobs.steps - i_x], trajectory[-1]  # trajectory[k] sits at sampling step steps - k

    def sample_z(self, x_T: np.ndarray, e_tgt: np.ndarray, knobs: Knobs):
        """z: the target prompt sampled from inverted noise x_T down to T_x + dtau."""
        _, i_z = edit_step(self.pipe.schedule, knobs)
        with self.stages("sample_to_edit"):
            return self.pipe.denoise(x_T, e_tgt, knobs.steps, knobs.guidance, stop=i_z, keep=(i_z,)).kept[i_z]

    # ---- 3. y ----
    def inject(self, recipes: Sequence[Recipe], x: np.ndarray, z: np.ndarray, knobs: Knobs):
        """y(alpha) = x + alpha (y - x) per image, with each of its attributes' change added: the attribute's MLP
        predicts the singular values of (x, z). Images with the same recipe are decomposed and predicted together."""
        with self.stages("svd_avi"):
            parts = []
            for lo, hi, recipe in _runs(recipes):
                xs = x[lo:hi]
                pair = avi.decompose(xs, z[lo:hi], knobs.k, knobs.tail)
                y = xs.copy()
                for a in recipe.attributes:
                    y = y + (avi.apply(a.params, pair, a.blend(recipe.strength)) - xs)
                parts.append(y)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    # ---- 4. the rest of the trajectory ----
    def finish(self, recipes: Sequence[Recipe], x: np.ndarray, z: np.ndarray, y: np.ndarray, e_src: np.ndarray,
               e_tgt: np.ndarray, knobs: Knobs, with_source: bool = False):
        """Denoise y from T_x to the end; with knobs.window > 1, x and z go on alongside y for that many steps
        and y is injected again at each. Returns the edited latents and, `with_source`, the source trajectory x
        finished alongside in the same batch (else None)."""
        i_x, _ = edit_step(self.pipe.schedule, knobs)
        alpha = np.array([np.mean([a.blend(r.strength) for a in r.attributes]) for r in recipes], np.float32)[:, None, None]
        e_cont = e_src + alpha * (e_tgt - e_src) if knobs.continuation == "target" else e_src
        n, i = len(x), i_x
        for _ in range(knobs.window - 1):
            if i >= knobs.steps - 1:
                break
            with self.stages("sample_rest"):
                both = self.pipe.denoise(np.concatenate([x, z, y]), np.concatenate([e_src, e_tgt, e_cont]),
                                         knobs.steps, knobs.guidance, start=i, stop=i + 1).latent
            x, z, y, i = both[:n], both[n:2 * n], both[2 * n:], i + 1
            y = self.inject(recipes, x, z, knobs) if any(r.strength != 0 for r in recipes) else y
        with self.stages("sample_rest"):
            if not with_source:
                return self.pipe.denoise(y, e_cont, knobs.steps, knobs.guidance, start=i).latent, None
            both = self.pipe.denoise(np.concatenate([x, y]), np.concatenate([e_src, e_cont]), knobs.steps,
                                     knobs.guidance, start=i).latent
        return both[n:], both[:n]

    def edit_latents(self, recipes: Sequence[Recipe], x: np.ndarray, z: np.ndarray, e_src: np.ndarray,
                     e_tgt: np.ndarray, knobs: Knobs, with_source: bool = False):
        """Steps 3 and 4 for a pair (x, z) already at T_x: inject, then finish."""
        y = self.inject(recipes, x, z, knobs)
        return self.finish(recipes, x, z, y, e_src, e_tgt, knobs, with_source)

    # ---- applying ----
    def check(self, recipes: Sequence[Recipe]) -> Knobs:
        """The knobs the images' attributes share for their edit, or an error if they cannot be edited together."""
        if not recipes or not all(r.attributes for r in recipes):
            raise SvdeditError("give at least one attribute.")
        first = recipes[0].attributes[0].knobs
        for r in recipes:
            for a in r.attributes:
                if a.engine not in self.engine_ids:
                    raise AttributeFileError(f"attribute {a.source!r} -> {a.target!r} was learned on another model; "
                                             f"learn it again on this engine.")
                if (a.knobs.steps, a.knobs.t_edit, a.knobs.dtau, a.knobs.guidance) != \
                   (first.steps, first.t_edit, first.dtau, first.guidance):
                    raise SvdeditError("attributes combined in one edit must share the knobs steps, t_edit, dtau and "
                                       f"guidance; {a.source!r} -> {a.target!r} differs from the first one.")
            if r.attributes[0].knobs.edit_key() != first.edit_key():
                raise SvdeditError("images edited in one batch must share the knobs of the edit (Knobs.edit_key); "
                                   "edit them in separate batches.")
        return first

    @staticmethod
    def targets(attrs: Sequence[Attribute], prompts: Sequence[str]) -> list[str]:
        """Each prompt with every attribute's word change applied."""
        out = []
        for p in prompts:
            for a in attrs:
                p = retarget(p, a.source, a.target)
            out.append(p)
        return out

    def edit_seeds(self, attrs: Sequence[Attribute], prompts: Sequence[str], seeds: Sequence[int],
                   strength: float = 1.0, target_prompts: Sequence[str] | None = None,
                   batch: int = 16, progress: Progress | None = None) -> EditResult:
        """Generate each (prompt, seed) and its edit by `attrs` at `strength`; both images come back."""
        return self.edit_seeds_with(Recipe.for_all(attrs, strength, len(seeds)), prompts, seeds, target_prompts,
                                    batch, progress)

    def edit_images(self, attrs: Sequence[Attribute], images: np.ndarray, prompts: Sequence[str],
                    strength: float = 1.0, target_prompts: Sequence[str] | None = None,
                    batch: int = 16, progress: Progress | None = None, originals=None) -> EditResult:
        """Edit real images (float32 (B, 3, H, W) in [-1, 1], already fitted): DDIM-invert, then as for seeds.
        `originals`: each image's (width, height) before fit(), SDXL's size conditioning (Pipeline.for_images)."""
        return self.edit_images_with(Recipe.for_all(attrs, strength, len(images)), images, prompts, target_prompts,
                                     batch, progress, originals)

    def edit_seeds_with(self, recipes: Sequence[Recipe], prompts: Sequence[str], seeds: Sequence[int],
                        target_prompts: Sequence[str] | None = None, batch: int = 16,
                        progress: Progress | None = None) -> EditResult:
        """edit_seeds with a recipe per image (attributes and strength may differ from image to image)."""
        knobs, prompts, tgts = self._prepare(recipes, prompts, target_prompts)
        if len(prompts) != len(seeds):
            raise SvdeditError(f"{len(prompts)} prompts for {len(seeds)} seeds; give one prompt per seed (or one for all).")
        i_x, i_z = edit_step(self.pipe.schedule, knobs)
        sources, edits = [], []
        for sl, e_src, e_tgt in self._batches(prompts, tgts, recipes, batch, progress):
            x_T = np.concatenate([self.pipe.noise(int(s)) for s in seeds[sl]])                         # 1.
            keys = None if self.cache is None else \
                [self._key("seed pair", knobs.steps, knobs.guidance, i_x, i_z, x_T[i], e_src[i], e_tgt[i])
                 for i in range(len(x_T))]
            cached = self.cache.get_all(keys) if keys else None
            if cached is not None:  # a re-edit: the pair and the source image are known; y alone goes on
                x, z, source = (np.stack(parts) for parts in zip(*cached))
                y, _ = self.edit_latents(recipes[sl], x, z, e_src, e_tgt, knobs)                        # 3., 4.
                with self.stages("vae_decode"):                                                          # 5.
                    sources.append(source)
                    edits.append(self.pipe.decode(y))
                continue
            x, z = self.sample_pair(x_T, e_src, e_tgt, knobs)                                            # 2.
            y, x_0 = self.edit_latents(recipes[sl], x, z, e_src, e_tgt, knobs, with_source=True)        # 3., 4.
            with self.stages("vae_decode"):                                                              # 5.
                images = self.pipe.decode(np.concatenate([x_0, y]))
            sources.append(images[:len(x_T)])
            edits.append(images[len(x_T):])
            for i, key in enumerate(keys or ()):
                self.cache.put(key, (x[i], z[i], images[i]))
        return EditResult(to_uint8(np.concatenate(sources)), to_uint8(np.concatenate(edits)), prompts, tgts)

    def edit_images_with(self, recipes: Sequence[Recipe], images: np.ndarray, prompts: Sequence[str],
                         target_prompts: Sequence[str] | None = None, batch: int = 16,
                         progress: Progress | None = None, originals=None) -> EditResult:
        """edit_images with a recipe per image (attributes and strength may differ from image to image).

        A caption ("" for none) need not contain the attributes' words: where it cannot be rewritten, the
        target is the caption's text embedding moved by each attribute's own pair (e(target) - e(source)), and
        the sampling uses knobs.uncaptioned_guidance (benchmarks/results/edit_quality.md, real images without
        their caption: colour works that way, size and position do not)."""
        knobs, prompts, tgts = self._prepare(recipes, prompts, target_prompts, images=True)
        captioned = [i for i, t in enumerate(tgts) if t is not None]
        uncaptioned = [i for i, t in enumerate(tgts) if t is None]
        edits = np.zeros_like(images)
        done = 0
        for group, group_knobs in ((captioned, knobs), (uncaptioned, knobs.replace(guidance=knobs.uncaptioned_guidance))):
            rs, ps, ts = [recipes[i] for i in group], [prompts[i] for i in group], [tgts[i] for i in group]
            report = None if progress is None else (lambda k, _n, base=done: progress(base + k, len(prompts)))
            for sl, e_src, e_tgt in self._batches(ps, ts, rs, batch, report):
                if originals is not None:  # SDXL: each image's size conditioning, in both embeddings (and the keys)
                    sizes = [originals[i] for i in group[sl]]
                    e_src, e_tgt = self.pipe.for_images(e_src, sizes), self.pipe.for_images(e_tgt, sizes)
                x, z = self._image_pair(images[group[sl]], e_src, e_tgt, group_knobs)                    # 1., 2.
                y, _ = self.edit_latents(rs[sl], x, z, e_src, e_tgt, group_knobs)                        # 3., 4.
                with self.stages("vae_decode"):                                                          # 5.
                    edits[group[sl]] = self.pipe.decode(y)
            done += len(group)
        return EditResult(to_uint8(images), to_uint8(edits), prompts, [UNCAPTIONED if t is None else t for t in tgts])

    def _image_pair(self, images: np.ndarray, e_src: np.ndarray, e_tgt: np.ndarray, knobs: Knobs):
        """Encode and invert the images, then sample z (steps 1 and 2 for real images), through the cache: the
        inversion is keyed by the pixels, the source embedding and the inversion's knobs; z by those and the target
        embedding. A batch is computed whole when any of its images is missing (same calls as without a cache)."""
        def encode():
            with self.stages("vae_encode"):
                return self.pipe.encode(images)
        if self.cache is None:
            return self.invert_pair(encode(), e_src, e_tgt, knobs)
        i_x, i_z = edit_step(self.pipe.schedule, knobs)
        inv_keys = [self._key("inversion", knobs.steps, knobs.inversion_guidance, i_x, images[i], e_src[i])
                    for i in range(len(images))]
        inverted = self.cache.get_all(inv_keys)
        if inverted is None:
            x, x_T = self.invert_to_edit(encode(), e_src, knobs)
            for i, key in enumerate(inv_keys):
                self.cache.put(key, (x[i], x_T[i]))
        else:
            x, x_T = (np.stack(parts) for parts in zip(*inverted))
        z_keys = [digest("z", key, knobs.guidance, i_z, e_tgt[i]) for i, key in enumerate(inv_keys)]
        zs = self.cache.get_all(z_keys)
        if zs is not None:
            return x, np.stack([v[0] for v in zs])
        z = self.sample_z(x_T, e_tgt, knobs)
        for i, key in enumerate(z_keys):
            self.cache.put(key, (z[i],))
        return x, z

    def _key(self, kind: str, *parts) -> str:
        """The cache key of one image's latents before the injection: the engine, the pipeline's numerics settings,
        and what shapes that trajectory (its knobs and step indices, the image's noise or pixels, its embeddings)."""
        return digest(kind, self.engine_hash, self.pipe.numerics_key(), *parts)

    def _prepare(self, recipes, prompts, target_prompts, images: bool = False) -> tuple[Knobs, list[str], list]:
        """The shared knobs, the prompts, and each image's target prompt: given, or the prompt with its attributes'
        word changes; for real images None where the prompt does not contain the words (see edit_images_with)."""
        knobs = self.check(recipes)
        prompts = list(prompts)
        if target_prompts is not None:
            return knobs, prompts, list(target_prompts)
        targets = []
        for r, p in zip(recipes, prompts):
            try:
                targets.append(self.targets(r.attributes, [p])[0])
            except SvdeditError:
                if not images:
                    raise
                targets.append(None)
        return knobs, prompts, targets

    def _batches(self, prompts: list[str], targets: list, recipes: Sequence[Recipe], batch: int,
                 progress: Progress | None) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        """The one batch loop of every edit: each slice of at most `batch` images, with the text embeddings of
        its source and target prompts (one text-encoder call; a None target is the source's embedding moved by
        its attributes' own pairs); progress is reported after each batch."""
        if batch < 1:
            raise SvdeditError(f"the batch size must be at least 1, not {batch}.")
        directions: dict[tuple, np.ndarray] = {}
        for b0 in range(0, len(prompts), batch):
            sl = slice(b0, b0 + batch)
            n = len(prompts[sl])
            named = [t for t in targets[sl] if t is not None]
            with self.stages("text"):
                e = self.pipe.encode_prompt(prompts[sl] + named)
                e_src, e_named = e[:n], iter(e[n:])
                e_tgt = np.stack([next(e_named) if t is not None else e_src[i] + self._text_direction(recipes[b0 + i],
                                                                                                       directions)
                                  for i, t in enumerate(targets[sl])])
            yield sl, e_src, e_tgt
            if progress is not None:
                progress(min(b0 + batch, len(prompts)), len(prompts))

    def _text_direction(self, recipe: Recipe, known: dict) -> np.ndarray:
        """The sum over the recipe's attributes of e(target prompt) - e(source prompt) (kept in `known`)."""
        key = tuple(id(a) for a in recipe.attributes)
        if key not in known:
            e = self.pipe.encode_prompt([a.source for a in recipe.attributes] + [a.target for a in recipe.attributes])
            k = len(recipe.attributes)
            known[key] = (e[k:] - e[:k]).sum(axis=0)
        return known[key]
