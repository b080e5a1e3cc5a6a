"""The HTTP API's request and response bodies (pydantic), and how a request body becomes the runtime's request.

The fields' meanings come from the runtime's one definition of a request (runtime/svdedit/runtime/editing/
request.py, PARAMS): their descriptions are taken from it, their values are checked by it (EditRequest.check
and the others) and not here, so that the command line and the service accept and refuse the same things.
`API_NAMES` is where this API spells a field differently from the runtime (one strength, one image per
request); tests/runtime/editing/test_request.py checks that every field of the runtime's requests is here.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from pydantic import BaseModel, Field

from svdedit.runtime.editing import request as runtime
from svdedit.runtime.editing.knobs import BOUNDS, Knobs
from svdedit.runtime.editing.request import ADAPTER_NAME, MAX_ATTRIBUTES, MAX_NAME_CHARS, PARAMS, SEED_MAX, describe
from svdedit.runtime.limits import Limits

#: the runtime's field name -> this API's (the others are the same)
API_NAMES = {"strengths": "strength", "images": "image"}


class LearnBody(BaseModel):
    source: str = Field(description=describe("source"))
    target: str = Field(description=describe("target"))
    seed: int = Field(0, description=describe("seed"))
    knobs: dict[str, Any] = Field(default_factory=dict, description=describe("knobs", "; any of `svdedit learn`'s knobs"))
    lora: str | None = Field(None, description=describe("lora"))

    def request(self) -> runtime.LearnRequest:
        return runtime.LearnRequest(self.source, self.target, self.seed, runtime.knobs_from(self.knobs), self.lora)


class AttributeInfo(BaseModel):
    id: str
    source: str
    target: str
    seed: int
    knobs: dict[str, Any]
    losses: dict[str, float]
    lora: str | None = Field(None, description="the adapter it was learned with (edits of it name the same one)")


class AdapterInfo(BaseModel):
    name: str = Field(description="what a request's `lora` names")
    file: str = Field(description="the adapter file's name")
    sha256: str
    scale: float
    layers: int = Field(description="LoRA layers in the file")
    components: list[str] = Field(description="the networks it changes (unet, text_encoder, ...)")


class EditBody(BaseModel):
    prompt: str = Field("", description=describe("prompt"))
    attributes: list[str] = Field(description=describe("attributes", ": ids from POST /v1/attributes"))
    strength: float = Field(1.0, description=describe("strengths").replace("; several:", ". The command line takes "
                                                                          "several:"))
    seeds: list[int] | None = Field(None, description=describe("seeds"))
    image: str | None = Field(None, description=describe("images", ": base64 of one PNG/JPEG/WebP file"))
    target_prompt: str | None = Field(None, description=describe("target_prompt"))
    cache_interval: int | None = Field(None, description=describe("cache_interval"))
    lora: str | None = Field(None, description=describe("lora"))

    def request(self, image: bytes | None) -> runtime.EditRequest:
        """The runtime's request (`image`: the decoded base64 of `image`), not yet checked."""
        return runtime.EditRequest(tuple(self.attributes), self.prompt,
                                   seeds=tuple(self.seeds) if self.seeds is not None else None,
                                   images=(image,) if image is not None else None, strengths=(self.strength,),
                                   target_prompt=self.target_prompt, cache_interval=self.cache_interval,
                                   lora=self.lora)


class EditedImage(BaseModel):
    image: str = Field(description="the edited image, base64 PNG")
    source: str | None = Field(None, description="the generated source image, base64 PNG (seeds only)")
    seed: int | None = None
    target_prompt: str


class EditResponse(BaseModel):
    edits: list[EditedImage]
    seconds_per_stage: dict[str, float] = Field(description="wall time of each stage of the batch this request ran in")
    batch_images: int = Field(description="images in that batch (this request's and others')")


class GenerateBody(BaseModel):
    prompt: str = Field(description=describe("prompt"))
    seed: int = Field(0, description=describe("seed"))
    steps: int = Field(50, description=describe("steps"))
    guidance: float = Field(3.0, description=describe("guidance"))
    lora: str | None = Field(None, description=describe("lora"))

    def request(self) -> runtime.GenerateRequest:
        return runtime.GenerateRequest(self.prompt, self.seed, self.steps, self.guidance, self.lora)


class GenerateResponse(BaseModel):
    image: str = Field(description="base64 PNG")


def bounds(limits: Limits) -> dict[str, dict[str, dict]]:
    """The bound of every field of each request body, as JSON-schema keywords, for a service with these `limits`
    (ServeSettings.request_limits): what request.py checks, written into the API's schema (app.py) so that a
    client reads them at /docs before it sends anything."""
    text = {"maxLength": limits.max_prompt_chars}
    seed = {"minimum": 0, "maximum": SEED_MAX}
    lora = {"pattern": f"^{ADAPTER_NAME.pattern}$"}

    def ranged(name: str) -> dict:
        return {"minimum": PARAMS[name].lo, "maximum": PARAMS[name].hi}
    return {
        "EditBody": {"prompt": text, "target_prompt": text, "strength": ranged("strengths"),
                     "attributes": {"minItems": 1, "maxItems": MAX_ATTRIBUTES, "uniqueItems": True,
                                    "items": {"minLength": 1, "maxLength": MAX_NAME_CHARS}},
                     "seeds": {"minItems": 1, "maxItems": limits.max_seeds, "items": seed},
                     "image": {"maxLength": 4 * math.ceil(limits.max_file_bytes / 3)},
                     "cache_interval": ranged("cache_interval"), "lora": lora},
        "LearnBody": {"source": text, "target": text, "seed": seed, "lora": lora,
                      "knobs": {"maxProperties": len(fields(Knobs)), "properties": _knob_bounds(limits)}},
        "GenerateBody": {"prompt": text, "seed": seed, "steps": {"minimum": 1, "maximum": limits.max_steps},
                         "guidance": ranged("guidance"), "lora": lora},
    }


def _knob_bounds(limits: Limits) -> dict[str, dict]:
    """Each knob's JSON type and range (knobs.py BOUNDS; steps and iters within this service's limits)."""
    kinds = {int: "integer", float: "number", bool: "boolean", str: "string"}
    out = {}
    for f in fields(Knobs):
        default = getattr(Knobs(), f.name)
        out[f.name] = {"type": kinds[type(default)], "default": default}
        if f.name in BOUNDS:
            out[f.name]["minimum"], out[f.name]["maximum"] = BOUNDS[f.name]
    out["steps"]["maximum"] = min(out["steps"]["maximum"], limits.max_steps)
    out["iters"]["maximum"] = min(out["iters"]["maximum"], limits.max_learn_iters)
    out["continuation"]["enum"] = ["target", "source"]
    return out
