"""A bug on demand, for the tests of failure isolation: install() makes the Editor of the process it runs in raise
ValueError (not a user's error: a bug) for any batch of seeds that holds POISON_SEED. Installed in this process for
uvicorn (a monkeypatch), and in every Ray worker through Ray's worker_process_setup_hook (tests/serve/conftest.py);
no other test sends that seed."""

from __future__ import annotations

POISON_SEED = 4_242_424_242


def install() -> None:
    from svdedit.runtime.editing.edit import Editor

    if getattr(Editor.edit_seeds_with, "poisoned", False):
        return
    real = Editor.edit_seeds_with

    def edit_seeds_with(self, recipes, prompts, seeds, *args, **kwargs):
        if POISON_SEED in seeds:
            raise ValueError("a poisoned batch (tests/serve/poison.py)")
        return real(self, recipes, prompts, seeds, *args, **kwargs)
    edit_seeds_with.poisoned = True
    Editor.edit_seeds_with = edit_seeds_with
