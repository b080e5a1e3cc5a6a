"""svdedit.runtime.editing: the editing method of arXiv:2502.02225 on top of the Pipeline.

- edit.py   the story of one edit, top to bottom (``Editor``: learn, sample_pair, inject, finish, edit_seeds,
            edit_images), and the prompt retargeting;
- avi.py    AVI's math: the channel SVD of a pair, the MLP with analytic gradients, Adam, the attribute file;
- cache.py  invert once, edit many (``EditCache``): each image's inversion and pair, for the next edit of it;
- knobs.py  every choice of the method (``Knobs``), recorded in each attribute file;
- probe.py  the paper's analysis tools (singular-value sweeps, subspace drift, rank of a direction).
"""

from svdedit.runtime.editing.avi import Attribute
from svdedit.runtime.editing.cache import EditCache
from svdedit.runtime.editing.edit import Editor, EditResult, retarget
from svdedit.runtime.editing.knobs import Knobs

__all__ = ["Attribute", "EditCache", "EditResult", "Editor", "Knobs", "retarget"]
