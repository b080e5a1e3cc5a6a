"""What the quality benchmarks share: the four attribute pairs of the embedded model, the held-out prompts of a
pair, and the summary of scores (models/shapes_data.score_edit reads every attribute off an image exactly)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from models.shapes_data import Attributes, sample_attributes

MODEL = Path(__file__).resolve().parents[2] / "models" / "shapes"
SEED0 = 10_000


@dataclasses.dataclass(frozen=True)
class EditPair:
    attribute: str
    source: str
    target: str
    learn_prompt: str  # the one source prompt the attribute is learned from (seed 0)


PAIRS = (
    EditPair("colour", "red", "blue", "a large red circle in the middle"),
    EditPair("size", "small", "large", "a small green square in the middle"),
    EditPair("shape", "circle", "square", "a large yellow circle on the left"),
    EditPair("position", "left", "right", "a small purple triangle on the left"),
)
def prompts_for(pair: EditPair, n: int, seed: int) -> tuple[list[str], list[Attributes]]:
    rng = np.random.default_rng(seed)
    attrs = [sample_attributes(rng).replace(**{pair.attribute: pair.source}) for _ in range(n)]
    return [a.caption() for a in attrs], attrs


def summarise(scores: list[dict]) -> dict:
    return {"n": len(scores),
            "success": float(np.mean([s["success"] for s in scores])),
            "identity": float(np.mean([s["identity"] for s in scores])),
            "success_and_identity": float(np.mean([s["success"] and s["identity"] for s in scores])),
            "psnr_outside_median_db": float(np.median([s["psnr_outside"] for s in scores]))}
