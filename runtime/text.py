"""Prompts to token ids with the engine dir's tokenizer.json (the `tokenizers` library alone).

Pads and truncates to the model's length (77 for SD) as the diffusers pipelines do, with the pad id
the manifest records (SD 1.x pads with <|endoftext|>, SD 2.x with "!"). A prompt that is cut warns
with the number of tokens dropped. An empty prompt is valid: it is the unconditional embedding.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from svdedit.runtime.errors import EngineDirError, PromptTruncatedWarning


class Tokenizer:
    def __init__(self, path: str | Path, length: int, pad_id: int):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a plain Exception for a bad file
            raise EngineDirError(f"{path} is not a loadable tokenizer.json ({exc}); re-export the model.") from None
        self.length = length
        self.pad_id = pad_id
        self._tok.no_padding()
        self._tok.no_truncation()

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """(len(prompts), length) int64 ids: BOS, tokens, EOS, then padding; cut to `length` with EOS kept."""
        out = np.full((len(prompts), self.length), self.pad_id, dtype=np.int64)
        for row, enc in enumerate(self._tok.encode_batch(list(prompts))):
            ids = enc.ids
            if len(ids) > self.length:
                dropped = len(ids) - self.length
                warnings.warn(f"prompt {prompts[row][:60]!r} is {len(ids)} tokens long; the last {dropped} tokens "
                              f"were dropped (the model reads {self.length}, BOS and EOS included).",
                              PromptTruncatedWarning, stacklevel=2)
                ids = ids[: self.length - 1] + ids[-1:]  # keep EOS, as transformers' truncation does
            out[row, : len(ids)] = ids
        return out
