"""svdedit.runtime.editing: the editing method of arXiv:2502.02225 on top of the Pipeline.

- request.py  what a request asks for, as one value checked once (``EditRequest``, ``LearnRequest``,
              ``GenerateRequest``; ``PARAMS``): the command line and the service both build these;
- edit.py     the story of one edit, top to bottom (``Editor``: sample_pair / invert_pair, inject, finish,
              edit_seeds, edit_images), and the prompt retargeting;
- learn.py    the story of learning an attribute (``learn``: the pair, AVI's training, the strength calibration);
- avi.py      AVI's math: the channel SVD of a pair, the MLP with analytic gradients, Adam, the attribute file;
- cache.py    invert once, edit many (``EditCache``): each image's inversion and pair, for the next edit of it;
- knobs.py    every choice of the method (``Knobs``), recorded in each attribute file;
- probe.py    the paper's analysis tools (singular-value sweeps, subspace drift, rank of a direction).
"""

from svdedit.runtime.editing.avi import Attribute
from svdedit.runtime.editing.cache import EditCache
from svdedit.runtime.editing.edit import Editor, EditResult, Recipe, retarget
from svdedit.runtime.editing.knobs import Knobs
from svdedit.runtime.editing.learn import calibrate, learn
from svdedit.runtime.editing.request import EditRequest, GenerateRequest, LearnRequest

__all__ = ["Attribute", "EditCache", "EditRequest", "EditResult", "Editor", "GenerateRequest", "Knobs", "LearnRequest",
           "Recipe", "calibrate", "learn", "retarget"]
