"""A request to the editor as one value, checked once, for every front end.

    request = EditRequest(attributes=("red_to_blue",), prompt="a small red square", seeds=(1, 2),
                          strengths=(0.5, 1.0)).check()
    learn = LearnRequest("a red circle", "a blue circle", seed=0, knobs=knobs_from({"t_edit": 0.5})).check()

The command line (cli/) and the service (serve/) each turn what they were given into one of these values and
call `check`: what may be asked, and the bounds, live here, in `PARAMS` (a field's meaning, its type and range)
and in runtime/limits.py (sizes). A value that cannot be taken raises InvalidRequestError naming the field as
these values name it ("strengths", "knobs.t_edit"); each front end spells the field its own way when it shows
the message (`--t-edit` on the command line, `knobs.t_edit` in the service's JSON: InvalidRequestError.spelt).
The service's request models (serve/svdedit/serve/models.py) take their descriptions from PARAMS, the CLI its
options' help, and tests/runtime/editing/test_request.py checks that both front ends offer every field.

What needs the open engines (the attributes resolved and combinable, step caching supported by this engine
dir, images decoded to the model's size) is checked by the Editor and the Pipeline when the request runs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from svdedit.runtime.editing.knobs import BOUNDS, Knobs
from svdedit.runtime.errors import InvalidRequestError, shown
from svdedit.runtime.limits import LIMITS, Limits

SEED_MAX = 2**63 - 1
#: strengths one request may ask for (each is a re-edit through the edit cache: a strip of them)
MAX_STRENGTHS = 16
#: attributes applied together in one edit
MAX_ATTRIBUTES = 16
#: characters of one attribute's name: a file path (the command line) or a store id (the service)
MAX_NAME_CHARS = 4096
#: a LoRA adapter's name in the service (`svdedit serve --lora NAME=FILE`): letters, digits, '.', '_', '-'
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Param:
    """One field of a request: what it means (the CLI's help, the API's description) and what it takes."""

    help: str
    lo: float | None = None
    hi: float | None = None


#: every field of the requests, by its name in the request values (EditRequest, LearnRequest, GenerateRequest)
PARAMS: dict[str, Param] = {
    "attributes": Param("the learned attributes to apply together (attribute files, or ids in the service's store)"),
    "prompt": Param("the prompt of the generated images (needed with seeds), or the images' caption (may be "
                    "partial or empty), e.g. 'a small red square on the left'"),
    "seeds": Param("edit generated images: one per seed", 0, SEED_MAX),
    "images": Param("or edit these images (real photos; they are DDIM-inverted first)"),
    "strengths": Param("0 = unchanged, 1 = the learned edit, >1 extrapolates; several: each image is inverted "
                       "(or sampled) once and re-edited at each", -10, 10),
    "target_prompt": Param("the target prompt, instead of the prompt with the attributes' word changes"),
    "cache_interval": Param("step caching (an engine exported with step caching): the UNet's deep branch runs "
                            "every N sampling steps; 1 = exact; default: the engine's own", 1, 1000),
    "batch": Param("images per UNet call", 1, LIMITS.max_batch_size),
    "source": Param("the source prompt, e.g. 'a large red circle in the middle'"),
    "target": Param("the attribute prompt, e.g. 'a large blue circle in the middle'"),
    "seed": Param("seed of the initial noise", 0, SEED_MAX),
    "knobs": Param("the method's knobs (runtime/svdedit/runtime/editing/knobs.py), e.g. {'t_edit': 0.5}"),
    "steps": Param("DDIM steps", 1, LIMITS.max_steps),
    "guidance": Param("classifier-free guidance scale (1 = off)", 0, 100),
    "lora": Param("a LoRA adapter to run with: in the service one of its adapters by name (GET /v1/adapters; "
                  "none: the engine as exported); on the command line an adapter file"),
}


def shown_bound(x: float) -> str:
    """A bound as a person writes it: 2**63 - 1 for the largest seed, 1000 rather than 1e+03."""
    if x == SEED_MAX:
        return "2**63 - 1"
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def describe(name: str, extra: str = "") -> str:
    """What the field `name` means, with its range when it has one, and `extra`: the CLI's help and the API's
    description of it."""
    p = PARAMS[name]
    bounds = f" ({shown_bound(p.lo)} to {shown_bound(p.hi)})" if p.lo is not None else ""
    return p.help + bounds + extra


def _whole(field: str, value, lo: float, hi: float) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(field, f"{{field}} = {shown(value)} is not a whole number; give {shown_bound(lo)} "
                                         f"to {shown_bound(hi)}.")
    if not lo <= value <= hi:
        raise InvalidRequestError(field, f"{{field}} = {shown(value)} is out of range; give {shown_bound(lo)} to "
                                         f"{shown_bound(hi)}.")
    return value


def _number(field: str, value, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(field, f"{{field}} = {shown(value)} is not a number; give {shown_bound(lo)} to "
                                         f"{shown_bound(hi)}.")
    if not (math.isfinite(value) and lo <= value <= hi):
        raise InvalidRequestError(field, f"{{field}} = {shown(value)} is out of range; give a number from {shown_bound(lo)} "
                                         f"to {shown_bound(hi)}.")
    return float(value)


def check_text(field: str, text, limits: Limits = LIMITS) -> str:
    """A prompt: a string of valid UTF-8 text of at most limits.max_prompt_chars characters."""
    if not isinstance(text, str):
        raise InvalidRequestError(field, f"{{field}} must be text, not {type(text).__name__}.")
    if len(text) > limits.max_prompt_chars:
        raise InvalidRequestError(field, f"{{field}} is {len(text)} characters long; the limit is "
                                         f"{limits.max_prompt_chars} (the text encoder reads 77 tokens).")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(field, "{field} is not valid UTF-8 text.") from None
    return text


def check_adapter_name(name: str | None) -> str | None:
    """A request's adapter: None (the engine as exported) or a name as `svdedit serve --lora NAME=FILE` gives one."""
    if name is not None and (not isinstance(name, str) or not ADAPTER_NAME.fullmatch(name)):
        raise InvalidRequestError("lora", f"{{field}} = {shown(name)} is not an adapter's name (1 to 64 letters, digits, "
                                          f"'.', '_' or '-'); the service lists its adapters at GET /v1/adapters.")
    return name


def _count(field: str, items, least: int, most: int, what: str) -> None:
    if not least <= len(items) <= most:
        raise InvalidRequestError(field, f"{{field}}: {len(items)} {what} given; one request takes at least {least} "
                                         f"and at most {most}.")


@dataclass(frozen=True)
class EditRequest:
    """Apply `attributes` to generated images (prompt + seeds) or to given images, at each of `strengths`."""

    attributes: tuple[str, ...]               # attribute files (CLI) or ids in a store (service): the front end resolves
    prompt: str = ""
    seeds: tuple[int, ...] | None = None
    images: tuple[Any, ...] | None = None     # what the front end holds: file paths, or an upload's bytes
    strengths: tuple[float, ...] = (1.0,)
    target_prompt: str | None = None
    cache_interval: int | None = None         # None: the engine's own
    batch: int = 16
    lora: str | None = None                   # the service's adapter, by name (the command line opens its files itself)

    def check(self, limits: Limits = LIMITS) -> "EditRequest":
        """This request, every field in its bounds (an InvalidRequestError naming the first that is not)."""
        check_text("prompt", self.prompt, limits)
        if self.target_prompt is not None:
            check_text("target_prompt", self.target_prompt, limits)
        if not isinstance(self.attributes, (tuple, list)) or not self.attributes:
            raise InvalidRequestError("attributes", "give at least one attribute in {field}.")
        _count("attributes", self.attributes, 1, MAX_ATTRIBUTES, "attributes")
        for name in self.attributes:
            if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
                raise InvalidRequestError("attributes", f"{{field}}: {shown(name)} is not an attribute's name; give "
                                                        f"a file path or an id of at most {MAX_NAME_CHARS} characters.")
        if len(set(self.attributes)) != len(self.attributes):
            raise InvalidRequestError("attributes", "{field} names an attribute more than once; give each once (for "
                                                    "a stronger edit raise the strength).")
        if (self.seeds is None) == (self.images is None):
            raise InvalidRequestError("seeds", "give either {field} (to edit generated images) or images, not both and "
                                               "not neither.")
        if self.seeds is not None:
            _count("seeds", self.seeds, 1, limits.max_seeds, "seeds")
            for s in self.seeds:
                _whole("seeds", s, 0, SEED_MAX)
            if not self.prompt.strip():
                raise InvalidRequestError("prompt", "seeds are generated from the prompt; give one in {field} (an image "
                                                    "may come without a caption, seeds may not).")
        else:
            _count("images", self.images, 1, limits.max_images, "images")
        _count("strengths", self.strengths, 1, MAX_STRENGTHS, "strengths")
        lo, hi = PARAMS["strengths"].lo, PARAMS["strengths"].hi
        strengths = tuple(_number("strengths", s, lo, hi) for s in self.strengths)
        if self.cache_interval is not None:
            _whole("cache_interval", self.cache_interval, PARAMS["cache_interval"].lo, PARAMS["cache_interval"].hi)
        _whole("batch", self.batch, 1, limits.max_batch_size)
        check_adapter_name(self.lora)
        return replace(self, attributes=tuple(self.attributes), strengths=strengths,
                       seeds=tuple(self.seeds) if self.seeds is not None else None,
                       images=tuple(self.images) if self.images is not None else None)

    @property
    def count(self) -> int:
        """Images to edit."""
        return len(self.seeds) if self.seeds is not None else len(self.images)


@dataclass(frozen=True)
class LearnRequest:
    """Learn the attribute `source` -> `target` from the one pair sampled from `seed`."""

    source: str
    target: str
    seed: int = 0
    knobs: Knobs = Knobs()
    lora: str | None = None

    def check(self, limits: Limits = LIMITS) -> "LearnRequest":
        check_text("source", self.source, limits)
        check_text("target", self.target, limits)
        if not self.source.strip() or not self.target.strip() or self.source.split() == self.target.split():
            raise InvalidRequestError("target", "source and {field} must be two different, non-empty prompts: the "
                                                "attribute is what changes between them.")
        _whole("seed", self.seed, 0, SEED_MAX)
        knobs = self.knobs.check()
        _whole("knobs.steps", knobs.steps, 1, limits.max_steps)
        _whole("knobs.iters", knobs.iters, 0, limits.max_learn_iters)
        check_adapter_name(self.lora)
        return self


@dataclass(frozen=True)
class GenerateRequest:
    """Text to image."""

    prompt: str
    seed: int = 0
    steps: int = 50
    guidance: float = 7.5
    lora: str | None = None

    def check(self, limits: Limits = LIMITS) -> "GenerateRequest":
        check_text("prompt", self.prompt, limits)
        _whole("seed", self.seed, 0, SEED_MAX)
        _whole("steps", self.steps, 1, limits.max_steps)
        check_adapter_name(self.lora)
        return replace(self, guidance=_number("guidance", self.guidance, 0, 100))


def knobs_from(values: Mapping[str, Any], base: Knobs = Knobs()) -> Knobs:
    """`base` with the knobs named in `values` replaced (e.g. a service request's JSON), each of its knob's type and
    in its range; InvalidRequestError("knobs.<name>") otherwise."""
    if not isinstance(values, Mapping):
        raise InvalidRequestError("knobs", "{field} must be an object of knob names and values, e.g. {'t_edit': 0.5}.")
    known = {f.name: type(getattr(base, f.name)) for f in fields(Knobs)}
    unknown = sorted(str(k) for k in values if k not in known)
    if unknown:
        raise InvalidRequestError("knobs", f"{{field}}: unknown knob(s) {', '.join(shown(k) for k in unknown[:5])}; "
                                           f"the knobs are {', '.join(sorted(known))}.")
    typed = {}
    for name, value in values.items():
        field, kind = f"knobs.{name}", known[name]
        lo, hi = BOUNDS.get(name, (None, None))
        if kind is int:
            typed[name] = _whole(field, value, lo, hi)
        elif kind is float:
            typed[name] = _number(field, value, lo, hi)
        elif not isinstance(value, kind):
            raise InvalidRequestError(field, f"{{field}} = {shown(value)} must be {kind.__name__} "
                                             f"(e.g. {getattr(base, name)!r}).")
        else:
            typed[name] = value
    return replace(base, **typed).check()
