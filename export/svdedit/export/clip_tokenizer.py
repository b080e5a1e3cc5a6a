"""The real CLIP BPE tokenizer, built offline from open_clip's merges file (shipped in data/).

No model hub is needed: ``data/bpe_simple_vocab_16e6.txt.gz`` comes from the open_clip wheel (MIT,
see data/LICENSE.open_clip). The vocabulary is the 256 byte-unicode symbols, the same with ``</w>``,
one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>``: 49408 tokens, the ids Stable
Diffusion's tokenizer uses ("a photo of a cat" -> 49406 320 1125 539 320 2368 49407).
"""

from __future__ import annotations

import gzip
from pathlib import Path

BPE_FILE = Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # open_clip uses the first 48894 merges
VOCAB_SIZE = 49408
BOS_ID, EOS_ID = 49406, 49407


def _bytes_to_unicode() -> list[str]:
    """GPT-2's reversible byte -> printable-unicode table, in CLIP's order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    lines = gzip.open(BPE_FILE).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = _bytes_to_unicode()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(vocab)}, merges


def build_clip_tokenizer(model_max_length: int = 77, pad_token: str = "<|endoftext|>"):
    """A transformers ``CLIPTokenizer`` equal to SD's (SD 1.x pads with <|endoftext|>, SD 2.x with "!").

    transformers 5 ignores the old ``vocab_file=`` keywords (it then builds a 2-token vocabulary), so
    the vocabulary and merges are passed as objects.
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length, pad_token=pad_token)
