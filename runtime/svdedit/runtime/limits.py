"""Every size a user can ask for, bounded: one settings object for the command line and the service alike.

A bound is checked before work starts (an image's pixels and aspect ratio from its header, a seed list
from its ranges, a knob from its value), so that a mistake costs a message, not minutes or gigabytes.
`svdedit serve` takes each field as an option; the other commands use these defaults. The knobs of the
method have their ranges in editing/knobs.py (BOUNDS).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 64 * 2**20      # an image file, an upload, an --init-noise file
    max_pixels: int = 50_000_000          # an image, read from its header before decoding (decompression bombs)
    max_aspect: float = 20.0              # an image's longer side over its shorter one (1 x 200000 strips)
    max_images: int = 1_000               # images of one `svdedit edit --image DIR` run
    max_seeds: int = 1_000                # seeds of one edit (a command, or a request to the service)
    max_prompt_chars: int = 1_000         # the text encoder reads 77 tokens; longer prompts are cut anyway
    max_steps: int = 1_000                # DDIM steps (a schedule has 1000)
    max_learn_iters: int = 100_000        # Adam steps of one `learn`
    max_batch_size: int = 256             # images per UNet call (--batch)
    max_grid: int = 1_024                 # images of one `probe sweep` grid (run in batches)


LIMITS = Limits()
