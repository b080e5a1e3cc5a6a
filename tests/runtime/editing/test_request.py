"""One request, checked once (runtime/svdedit/runtime/editing/request.py): its bounds, its errors in the runtime's
terms, and both front ends offering every one of its fields under their own names."""

from __future__ import annotations

from dataclasses import fields

import pytest

from svdedit.runtime.editing.knobs import Knobs
from svdedit.runtime.editing.request import (
    MAX_STRENGTHS,
    PARAMS,
    EditRequest,
    GenerateRequest,
    LearnRequest,
    knobs_from,
)
from svdedit.runtime.errors import InvalidRequestError
from svdedit.runtime.limits import Limits

SEEDS = dict(attributes=("a",), prompt="a red square", seeds=(1,))


@pytest.mark.parametrize("changes, field", [
    (dict(attributes=()), "attributes"),
    (dict(attributes=("a", "a")), "attributes"),
    (dict(attributes=tuple(str(i) for i in range(17))), "attributes"),
    (dict(seeds=(-1,)), "seeds"),
    (dict(seeds=(2**63,)), "seeds"),
    (dict(seeds=(1.5,)), "seeds"),
    (dict(seeds=(True,)), "seeds"),
    (dict(seeds=()), "seeds"),
    (dict(seeds=None), "seeds"),                     # neither seeds nor images
    (dict(images=(b"x",)), "seeds"),                 # both
    (dict(prompt=""), "prompt"),                     # seeds need a prompt
    (dict(prompt="x" * 1001), "prompt"),
    (dict(prompt=7), "prompt"),
    (dict(target_prompt="\ud800"), "target_prompt"),
    (dict(strengths=()), "strengths"),
    (dict(strengths=(11.0,)), "strengths"),
    (dict(strengths=(float("nan"),)), "strengths"),
    (dict(strengths=("1",)), "strengths"),
    (dict(strengths=(1.0,) * (MAX_STRENGTHS + 1)), "strengths"),
    (dict(cache_interval=0), "cache_interval"),
    (dict(cache_interval=2.0), "cache_interval"),
    (dict(batch=0), "batch"),
])
def test_every_bad_field_of_an_edit_is_named(changes, field):
    with pytest.raises(InvalidRequestError) as caught:
        EditRequest(**{**SEEDS, **changes}).check()
    assert caught.value.field == field
    assert "{field}" not in str(caught.value) and "--" not in str(caught.value)


def test_a_good_edit_comes_back_normalised():
    r = EditRequest(["a", "b"], "a red square", seeds=[1, 2], strengths=[0, 1]).check()
    assert r.attributes == ("a", "b") and r.seeds == (1, 2) and r.strengths == (0.0, 1.0) and r.count == 2
    r = EditRequest(("a",), images=("x.png", "y.png")).check()  # an image needs no caption
    assert r.count == 2
    with pytest.raises(InvalidRequestError, match="at most 1"):
        EditRequest(("a",), images=("x.png", "y.png")).check(Limits(max_images=1))


def test_learn_and_generate_are_checked_the_same_way():
    with pytest.raises(InvalidRequestError) as caught:
        LearnRequest("a red circle", "a red circle").check()
    assert caught.value.field == "target"
    with pytest.raises(InvalidRequestError) as caught:
        LearnRequest("a red circle", "a blue circle", knobs=Knobs(steps=50, iters=10)).check(Limits(max_learn_iters=5))
    assert caught.value.field == "knobs.iters"
    for bad, field in ((dict(seed=-1), "seed"), (dict(steps=0), "steps"), (dict(steps=2.5), "steps"),
                       (dict(guidance=float("inf")), "guidance")):
        with pytest.raises(InvalidRequestError) as caught:
            GenerateRequest("a red circle", **bad).check()
        assert caught.value.field == field


@pytest.mark.parametrize("values, field", [
    ({"colour": 1}, "knobs"), ({"steps": 2.5}, "knobs.steps"), ({"k": 4.0}, "knobs.k"), ({"tail": 1}, "knobs.tail"),
    ({"t_edit": "0.5"}, "knobs.t_edit"), ({"t_edit": 2}, "knobs.t_edit"), ({"steps": True}, "knobs.steps"),
    ([1, 2], "knobs"),
])
def test_knobs_from_json_are_typed_and_named(values, field):
    with pytest.raises(InvalidRequestError) as caught:
        knobs_from(values)
    assert caught.value.field == field


def test_knobs_from_json_take_ints_for_floats():
    assert knobs_from({"t_edit": 0.5, "guidance": 4, "tail": False}) == Knobs(t_edit=0.5, guidance=4.0, tail=False)


def test_each_front_end_spells_the_field_its_own_way():
    from svdedit.cli.args import flag_of

    pytest.importorskip("fastapi")
    from svdedit.serve.errors import described

    with pytest.raises(InvalidRequestError) as caught:
        Knobs(t_edit=1.5).check()
    exc = caught.value
    assert str(exc).startswith("knobs.t_edit = 1.5")
    assert exc.spelt(flag_of(exc.field)).startswith("--t-edit = 1.5")
    assert described(exc)[1:] == (str(exc), "knobs.t_edit")
    with pytest.raises(InvalidRequestError) as caught:
        EditRequest(**{**SEEDS, "strengths": (12.0,)}).check()
    assert caught.value.spelt(flag_of(caught.value.field)).startswith("--strength = 12")
    status, message, field = described(caught.value)
    assert status == 422 and field == "strength" and message.startswith("strength = 12")


# ---- both front ends offer every field of the one definition ----
NOT_ON_THE_API = {"batch"}  # the service batches requests itself


def _cli_options(command: str) -> set[str]:
    from svdedit.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {s for a in sub._actions for s in a.option_strings}


@pytest.mark.parametrize("request_type, command", [(EditRequest, "edit"), (LearnRequest, "learn"),
                                                   (GenerateRequest, "generate")])
def test_the_command_line_offers_every_field(request_type, command):
    from svdedit.cli.args import flag_of

    options = _cli_options(command)
    names = [f.name for f in fields(request_type) if f.name != "knobs"]
    if any(f.name == "knobs" for f in fields(request_type)):
        names += [f"knobs.{f.name}" for f in fields(Knobs)]
    missing = [n for n in names if flag_of(n) not in options]
    assert not missing, f"svdedit {command} has no option for {missing}"


@pytest.mark.parametrize("request_type, body", [(EditRequest, "EditBody"), (LearnRequest, "LearnBody"),
                                                (GenerateRequest, "GenerateBody")])
def test_the_service_offers_every_field_and_describes_it_from_the_definition(request_type, body):
    pytest.importorskip("fastapi")
    from svdedit.serve import models

    model = getattr(models, body).model_fields
    wanted = {models.API_NAMES.get(f.name, f.name): f.name for f in fields(request_type)}
    missing = sorted(api for api, name in wanted.items() if name not in NOT_ON_THE_API and api not in model)
    assert not missing, f"{body} has no field {missing}"
    extra = sorted(set(model) - set(wanted))
    assert not extra, f"{body} has fields the runtime's request does not: {extra}"
    for api, name in wanted.items():
        if api in model:
            assert model[api].description.startswith(PARAMS[name].help.split(";")[0]), api
