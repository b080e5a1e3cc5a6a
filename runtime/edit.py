"""Editing through the engines: learn an attribute from one prompt pair (AVI), apply it to seeds and images.

The story of one edit, top to bottom (T_x = the step nearest knobs.t_edit of the schedule):

    1. the source latent x_T: seeded noise, or the DDIM inversion of an image with its prompt;
    2. sample the source prompt and the target prompt from the same x_T, in one batched UNet call per
       step, down to T_x (x) and T_x + dtau (z);
    3. decompose x and z channel-wise (kernels.channel_svd), let the attribute's MLP predict the
       singular values, rebuild y (runtime/avi.py), blend y(alpha) = x + alpha (y - x);
    4. continue denoising y(alpha) to the end. The continuation's text embedding is the source's
       blended towards the target's by the same alpha (knobs.continuation = "target", our default), or
       the source's alone (= "source", the paper's literal reading; measured in
       benchmarks/results/edit_quality.md to lose most edits). alpha = 0 reproduces the source image;
    5. decode.

The target prompt of a new image comes from its own prompt by the attribute's word change
("red" -> "blue" turns "a small red square on the right" into "a small blue square on the right"),
see `retarget`; `target_prompts=` overrides it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from svdedit.runtime import avi, ddim
from svdedit.runtime.avi import Attribute, Knobs
from svdedit.runtime.errors import SvdeditError
from svdedit.runtime.contract import engine_identity
from svdedit.runtime.pipeline import Pipeline, _non_finite_is_our_error
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
                                   f"({source!r} -> {target!r}); give the target prompt explicitly (--target-prompt).")
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


def edit_step(pipe: Pipeline, knobs: Knobs) -> tuple[int, int]:
    """Indices into the sampling timesteps of x (T_x) and z (T_x + dtau)."""
    i_x = ddim.step_nearest(pipe.schedule, knobs.steps, knobs.t_edit)
    i_z = i_x - knobs.dtau
    if not 0 <= i_z < knobs.steps:
        raise SvdeditError(f"--dtau {knobs.dtau} puts z outside the {knobs.steps} steps (T_x is step {i_x}).")
    return i_x, i_z


@dataclass
class EditResult:
    source: np.ndarray            # uint8 (B, H, W, 3): the unedited image (generated, or the input as fitted)
    edited: np.ndarray            # uint8 (B, H, W, 3)
    source_prompts: list[str]
    target_prompts: list[str]


class Editor:
    """Learning and applying attributes through one open Pipeline.

    `stages`: a runtime.timing.Stages to collect the wall time of each stage of an edit (text,
    vae_encode, invert, sample_to_edit, svd_avi, sample_rest, vae_decode); by default nothing is timed.
    """

    def __init__(self, pipe: Pipeline, stages=NO_STAGES):
        self.pipe = pipe
        self.stages = stages
        self.engine_hash = engine_identity(pipe.manifest)

    # ---- trajectories ----
    def _sample(self, x, cond, knobs: Knobs, start: int, stop: int, keep=()):
        """DDIM from step index `start` to `stop`; returns the latent at `stop` and those at the `keep` indices."""
        kept = {i: x for i in keep if i == start}
        eps = self.pipe.eps_fn_from_embeddings(cond, knobs.guidance)
        watch = self.pipe._watch(stop - start, None, offset=start)

        def callback(i, t, xi):
            watch(i, t, xi)
            if i + 1 in keep:
                kept[i + 1] = xi
        with _non_finite_is_our_error():
            x = ddim.sample(eps, x, self.pipe.schedule, knobs.steps, start=start, stop=stop, callback=callback)
        return x, kept

    def _pair(self, x_T, e_src, e_tgt, knobs):
        """x at T_x and z at T_x + dtau, sampled from the same x_T in one batch."""
        i_x, i_z = edit_step(self.pipe, knobs)
        n = len(x_T)
        _, kept = self._sample(np.concatenate([x_T, x_T]), np.concatenate([e_src, e_tgt]), knobs,
                               0, max(i_x, i_z), keep=(i_x, i_z))
        return kept[i_x][:n], kept[i_z][n:]

    # ---- learning ----
    def learn(self, source: str, target: str, seed: int = 0, knobs: Knobs = Knobs(),
              progress: Callable[[int, int, dict], None] | None = None) -> Attribute:
        knobs = knobs.check()
        e = self.pipe.encode_prompt([source, target])
        x, z = self._pair(self.pipe.noise(seed), e[:1], e[1:], knobs)
        pair = avi.decompose(x, z, knobs.k, knobs.tail)
        params, losses = avi.train(pair, knobs, seed=seed, progress=progress)
        params = {n: np.asarray(v.get() if hasattr(v, "get") else v, np.float32) for n, v in params.items()}
        return Attribute(params, source, target, knobs, self.engine_hash, tuple(x.shape[1:]), seed,
                         {n: round(float(v), 6) for n, v in losses.items()})

    # ---- applying ----
    def check(self, attrs: Sequence[Attribute]) -> Knobs:
        if not attrs:
            raise SvdeditError("give at least one attribute (--attr FILE).")
        for a in attrs:
            if a.engine != self.engine_hash:
                raise avi.AttributeFileError(f"attribute {a.source!r} -> {a.target!r} was learned on another model; "
                                             f"learn it again on this engine.")
        first = attrs[0].knobs
        for a in attrs[1:]:
            if (a.knobs.steps, a.knobs.t_edit, a.knobs.dtau, a.knobs.guidance) != \
               (first.steps, first.t_edit, first.dtau, first.guidance):
                raise SvdeditError("attributes combined in one edit must share --steps, --t-edit, --dtau and --guidance; "
                                   f"{a.source!r} -> {a.target!r} differs from the first one.")
        return first

    @staticmethod
    def targets(attrs: Sequence[Attribute], prompts: Sequence[str]) -> list[str]:
        out = []
        for p in prompts:
            for a in attrs:
                p = retarget(p, a.source, a.target)
            out.append(p)
        return out

    def _edit_from(self, attrs, x, z, e_src, e_tgt, strength, knobs, finish_source: bool = False):
        """y(alpha) from (x, z) at T_x, continued to the end. Returns the edited latents and, with
        `finish_source`, the source trajectory x finished alongside in the same batch (else None)."""
        i_x, _ = edit_step(self.pipe, knobs)
        alpha = np.float32(strength)
        e_cont = e_src + alpha * (e_tgt - e_src) if knobs.continuation == "target" else e_src

        def inject(x, z):
            pair = avi.decompose(x, z, knobs.k, knobs.tail)
            y = x.copy()
            for a in attrs:
                y = y + (avi.apply(a.params, pair, strength) - x)
            return y

        with self.stages("svd_avi"):
            y = inject(x, z)
        n = len(x)
        # the window: keep x and z going alongside y, re-inject at each of its steps
        xs, zs, i = x, z, i_x
        for _ in range(knobs.window - 1):
            if i >= knobs.steps - 1:
                break
            both, _ = self._sample(np.concatenate([xs, zs, y]), np.concatenate([e_src, e_tgt, e_cont]),
                                   knobs, i, i + 1)
            xs, zs, y, i = both[:n], both[n:2 * n], both[2 * n:], i + 1
            y = inject(xs, zs) if strength != 0 else y
        with self.stages("sample_rest"):
            if not finish_source:
                return self._sample(y, e_cont, knobs, i, knobs.steps)[0], None
            both, _ = self._sample(np.concatenate([xs, y]), np.concatenate([e_src, e_cont]), knobs, i, knobs.steps)
        return both[n:], both[:n]

    def edit_seeds(self, attrs: Sequence[Attribute], prompts: Sequence[str], seeds: Sequence[int],
                   strength: float = 1.0, target_prompts: Sequence[str] | None = None,
                   batch: int = 16, progress: Progress | None = None) -> EditResult:
        """Generate each (prompt, seed) and its edit; both images come back."""
        knobs = self.check(attrs)
        prompts = list(prompts)
        if len(prompts) != len(seeds):
            raise SvdeditError(f"{len(prompts)} prompts for {len(seeds)} seeds; give one prompt per seed (or one for all).")
        tgts = list(target_prompts) if target_prompts is not None else self.targets(attrs, prompts)
        src_imgs, edit_imgs = [], []
        for b0 in range(0, len(seeds), batch):
            sl = slice(b0, b0 + batch)
            x_T = np.concatenate([self.pipe.noise(int(s)) for s in seeds[sl]])
            with self.stages("text"):
                e = self.pipe.encode_prompt(prompts[sl] + tgts[sl])
            e_src, e_tgt = e[:len(x_T)], e[len(x_T):]
            with self.stages("sample_to_edit"):
                x, z = self._pair(x_T, e_src, e_tgt, knobs)
            y, x0 = self._edit_from(attrs, x, z, e_src, e_tgt, strength, knobs, finish_source=True)
            with self.stages("vae_decode"):
                imgs = self.pipe.decode(np.concatenate([x0, y]))
            src_imgs.append(imgs[:len(x_T)])
            edit_imgs.append(imgs[len(x_T):])
            if progress is not None:
                progress(min(b0 + batch, len(seeds)), len(seeds))
        from svdedit.runtime.images import to_uint8

        return EditResult(to_uint8(np.concatenate(src_imgs)), to_uint8(np.concatenate(edit_imgs)), prompts, tgts)

    def edit_images(self, attrs: Sequence[Attribute], images: np.ndarray, prompts: Sequence[str],
                    strength: float = 1.0, target_prompts: Sequence[str] | None = None,
                    batch: int = 16, progress: Progress | None = None) -> EditResult:
        """Edit real images (float32 (B, 3, H, W) in [-1, 1], already fitted): DDIM-invert, then as for seeds."""
        knobs = self.check(attrs)
        prompts = list(prompts)
        tgts = list(target_prompts) if target_prompts is not None else self.targets(attrs, prompts)
        i_x, i_z = edit_step(self.pipe, knobs)
        out = []
        for b0 in range(0, len(images), batch):
            sl = slice(b0, b0 + batch)
            with self.stages("text"):
                e = self.pipe.encode_prompt(prompts[sl] + tgts[sl])
            n = len(images[sl])
            e_src, e_tgt = e[:n], e[n:]
            with self.stages("vae_encode"):
                latent0 = self.pipe.encode(images[sl])
            with self.stages("invert"), _non_finite_is_our_error():
                traj = ddim.invert(self.pipe.eps_fn_from_embeddings(e_src, knobs.inversion_guidance), latent0,
                                   self.pipe.schedule, knobs.steps)
            x = traj[knobs.steps - i_x]  # trajectory[k] sits at sampling step steps - k
            with self.stages("sample_to_edit"):
                _, kept = self._sample(traj[-1], e_tgt, knobs, 0, i_z, keep=(i_z,))
            y, _ = self._edit_from(attrs, x, kept[i_z], e_src, e_tgt, strength, knobs)
            with self.stages("vae_decode"):
                out.append(self.pipe.decode(y))
            if progress is not None:
                progress(min(b0 + batch, len(images)), len(images))
        from svdedit.runtime.images import to_uint8

        return EditResult(to_uint8(images), to_uint8(np.concatenate(out)), prompts, tgts)
