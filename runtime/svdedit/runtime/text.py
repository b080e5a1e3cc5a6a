"""Prompts to token ids with the engine dir's tokenizer.json (the `tokenizers` library alone).

Pads and truncates to the model's length (77 for SD) as the diffusers pipelines do, with the pad id
the manifest records (SD 1.x pads with <|endoftext|>, SD 2.x with "!"). A prompt that is cut warns
with the number of tokens dropped. An empty prompt is valid: it is the unconditional embedding.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from svdedit.runtime.errors import EngineDirError, PromptTruncatedWarning, SvdeditError


class Tokenizer:
    def __init__(self, path: str | Path, length: int, pad_id: int):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            if Path(path).stat().st_size > 64 * 2**20:
                raise ValueError("it is larger than any CLIP tokenizer (64 MiB)")
            self._tok = HFTokenizer.from_file(str(path))
        except BaseException as exc:  # noqa: BLE001  a plain Exception for a bad file; pyo3's PanicException for worse
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            from importlib.metadata import version

            raise EngineDirError(f"{path} is not a loadable tokenizer.json ({type(exc).__name__}: "
                                 f"{str(exc)[:200]}) for tokenizers {version('tokenizers')}; re-export the model, or "
                                 f"upgrade tokenizers if it is older than svdedit asks for (pip install -U tokenizers)."
                                 ) from None
        vocab = self._tok.get_vocab_size(with_added_tokens=True)
        if not 0 <= pad_id < vocab:
            raise EngineDirError(f"the manifest's text.pad_id {pad_id} is not an id of {path} (0 to {vocab - 1}); "
                                 f"re-export the model.")
        self.length = length
        self.pad_id = pad_id
        self._tok.no_padding()
        self._tok.no_truncation()

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """(len(prompts), length) int64 ids: BOS, tokens, EOS, then padding; cut to `length` with EOS kept."""
        out = np.full((len(prompts), self.length), self.pad_id, dtype=np.int64)
        for p in prompts:
            if not isinstance(p, str):
                raise SvdeditError(f"a prompt must be text, not {type(p).__name__}.")
            try:
                p.encode("utf-8")
            except UnicodeEncodeError:
                raise SvdeditError(f"the prompt {p[:60]!r} is not valid UTF-8 text; write it again (from a UTF-8 "
                                   f"terminal or file).") from None
        try:
            encoded = self._tok.encode_batch(list(prompts))
        except BaseException as exc:  # noqa: BLE001  tokenizers panics (pyo3 PanicException) on some inputs
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise SvdeditError(f"the tokenizer cannot read the prompt ({type(exc).__name__}: {str(exc)[:200]}).") from None
        for row, enc in enumerate(encoded):
            ids = enc.ids
            if len(ids) > self.length:
                dropped = len(ids) - self.length
                warnings.warn(f"prompt {prompts[row][:60]!r} is {len(ids)} tokens long; the last {dropped} tokens "
                              f"were dropped (the model reads {self.length}, BOS and EOS included).",
                              PromptTruncatedWarning, stacklevel=2)
                ids = ids[: self.length - 1] + ids[-1:]  # keep EOS, as transformers' truncation does
            out[row, : len(ids)] = ids
        return out
