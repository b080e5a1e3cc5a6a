"""runtime/svdedit/runtime/text.py: SD's tokenization from tokenizer.json alone (transformers is the oracle)."""

import functools
import json
import warnings

import numpy as np
import pytest

from svdedit.runtime.errors import PromptTruncatedWarning
from svdedit.runtime.text import Tokenizer
from tests.conftest import requires_torch


def _tokenizer_json(tmp_path, pad_token):
    from svdedit.export.clip_tokenizer import build_clip_tokenizer

    ref = build_clip_tokenizer(pad_token=pad_token)
    ref.save_pretrained(tmp_path)
    return ref, tmp_path / "tokenizer.json"


@requires_torch
@pytest.mark.parametrize("pad_token, pad_id", [("<|endoftext|>", 49407), ("!", 0)])
def test_ids_match_transformers_padding_and_truncation(tmp_path, pad_token, pad_id):
    ref, path = _tokenizer_json(tmp_path, pad_token)
    tok = Tokenizer(path, 77, pad_id)
    long = "a very " * 60 + "large red circle"
    prompts = ["a photo of a cat", "", "A large RED circle, on the left!", long]
    want = ref(prompts, padding="max_length", max_length=77, truncation=True).input_ids
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = tok(prompts)
    np.testing.assert_array_equal(got, np.array(want))
    assert got.dtype == np.int64 and got.shape == (4, 77)
    assert got[1, 0] == 49406 and got[1, 1] == 49407 and got[1, 2] == pad_id  # "" is BOS EOS pad...
    n_long = len(ref(long).input_ids)
    messages = [str(w.message) for w in caught if issubclass(w.category, PromptTruncatedWarning)]
    assert len(messages) == 1 and f"the last {n_long - 77} tokens were dropped" in messages[0]


def test_a_broken_tokenizer_file_is_a_clear_error(tmp_path):
    from svdedit.runtime.errors import EngineDirError

    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(EngineDirError, match="not a loadable tokenizer.json"):
        Tokenizer(tmp_path / "tokenizer.json", 77, 49407)


# ---- property-based: damaged tokenizer files and any prompt (issue 18) ----
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.fuzzing import FUZZ, mutate, mutations  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    pytest.importorskip("transformers")
    from svdedit.export.clip_tokenizer import build_clip_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    build_clip_tokenizer().save_pretrained(folder)
    return json.loads((folder / "tokenizer.json").read_text())


@FUZZ
@given(changes=mutations(), garbage=st.binary(max_size=200))
def test_any_damaged_tokenizer_file_loads_or_is_a_clear_error(tmp_path_factory, tokenizer_json, changes, garbage):
    from svdedit.runtime.errors import EngineDirError

    tok = dict(tokenizer_json)
    tok["model"] = {k: v for k, v in tok["model"].items() if k not in ("vocab", "merges")}  # keep the mutations cheap
    folder = tmp_path_factory.getbasetemp()
    for i, text in enumerate((json.dumps(mutate(tok, changes)), garbage.decode("latin-1"))):
        path = folder / f"tok{i}.json"
        path.write_text(text)
        try:
            Tokenizer(path, 77, 0)
        except EngineDirError as exc:
            assert str(path) in str(exc) or "pad_id" in str(exc)


@functools.cache
def clip_tokenizer(path):
    return Tokenizer(path, 77, 49407)


@FUZZ
@given(prompt=st.text(max_size=300))
def test_any_prompt_is_tokenized_or_refused_clearly(tmp_path_factory, tokenizer_json, prompt):
    import warnings

    from svdedit.runtime.errors import SvdeditError

    path = tmp_path_factory.getbasetemp() / "clip.json"
    if not path.exists():
        path.write_text(json.dumps(tokenizer_json))
    tok = clip_tokenizer(path)  # loaded once: what is fuzzed is the prompt (loading CLIP's vocabulary 200 times took 30 s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ids = tok([prompt, prompt + "\udcff"])[0]
            assert ids.shape == (77,) and ids.min() >= 0
        except SvdeditError as exc:
            assert "UTF-8" in str(exc)
