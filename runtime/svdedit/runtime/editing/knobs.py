"""Every choice of the editing method, in one frozen dataclass, recorded in each attribute file.

The first group shapes the edit (which steps, how the pair is sampled, how y is built and continued)
and is shared by learning and applying: attributes combined in one edit must agree on the trajectory
knobs (steps, t_edit, dtau, guidance). The second group is the learning's (the MLP and its four
losses, runtime/svdedit/runtime/editing/avi.py). The defaults were chosen on benchmarks/quality/bench_edit_quality.py and
benchmarks/quality/sweep_edit_knobs.py; `svdedit learn --help` lists every knob as an option.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from svdedit.runtime.errors import InvalidRequestError, SvdeditError


#: the range of every numeric knob: what a user may ask for (the service's limits are tighter where they say so)
BOUNDS = {"steps": (1, 1000), "guidance": (0, 100), "t_edit": (0, 1), "dtau": (-999, 999), "k": (1, 64),
          "window": (1, 1000), "inversion_guidance": (0, 100), "uncaptioned_guidance": (0, 100), "hidden": (1, 4096),
          "w_target": (0, 1e6), "w_source": (0, 1e6), "w_target_sv": (0, 1e6), "w_source_sv": (0, 1e6),
          "iters": (0, 100_000), "lr": (0, 10), "calibration_seeds": (0, 64)}

#: the knobs of the edit, as opposed to those of the learning
EDIT_KNOBS = ("steps", "guidance", "t_edit", "dtau", "k", "tail", "continuation", "window", "inversion_guidance",
              "uncaptioned_guidance")


@dataclass(frozen=True)
class Knobs:
    """Every choice of the method; the defaults were chosen on benchmarks/quality/bench_edit_quality.py."""

    # ---- the edit: trajectories, the pair, y, the continuation ----
    steps: int = 50                 # DDIM steps of every trajectory
    guidance: float = 3.0           # classifier-free guidance of sampling (source, target, continuation)
    t_edit: float = 0.4             # T_x as a fraction of the training timesteps (0 = clean, 1 = noise)
    dtau: int = 0                   # z is taken this many DDIM steps earlier (>0, noisier) than x
    k: int = 4                      # singular triplets taken from each of x and z, per channel
    tail: bool = True               # keep x's residual beyond its top k
    continuation: str = "target"    # prompt after T_x: "target" (blended with strength) or "source" (the paper)
    window: int = 1                 # inject y at this many consecutive steps from T_x (1 = once)
    inversion_guidance: float = 1.0  # DDIM inversion of real images
    uncaptioned_guidance: float = 3.0  # guidance for real images without a usable caption (no word to change)
    # ---- the learning: the MLP and the weights of its four losses ----
    hidden: int = 64                # MLP width (one hidden tanh layer)
    w_target: float = 1.0           # l1
    w_source: float = 0.1           # l2
    w_target_sv: float = 0.05       # l3
    w_source_sv: float = 0.05       # l4
    iters: int = 300                # Adam steps
    lr: float = 1e-2
    calibration_seeds: int = 4      # seeds of the learning pair that calibrate the strength scale (0 = none)

    def check(self, source: str | None = None) -> "Knobs":
        """Every knob in its range, or an error naming it: InvalidRequestError("knobs.t_edit") for knobs given in
        a request (each front end names the field its own way), or a SvdeditError naming the file `source` they
        were read from (FILE: knob t_edit = 5: ...)."""
        def bad(name, why):
            value = getattr(self, name)
            if source:
                raise SvdeditError(f"{source}: knob {name} = {value!r}: {why}")
            raise InvalidRequestError(f"knobs.{name}", f"{{field}} = {value!r}: {why}")
        for name, (lo, hi) in BOUNDS.items():
            value = getattr(self, name)
            if not (math.isfinite(value) and lo <= value <= hi):
                bad(name, f"must be a number from {lo:g} to {hi:g}.")
        if not 0.0 < self.t_edit < 1.0:
            bad("t_edit", "must be a fraction of the schedule strictly between 0 and 1 (e.g. 0.5).")
        i_x = round(self.steps * (1 - self.t_edit))  # T_x's step index (edit_step finds it exactly on the schedule)
        if not i_x - self.steps < self.dtau <= i_x:
            bad("dtau", f"with {self.steps} steps and t_edit {self.t_edit:g}, z would be taken at step {i_x - self.dtau}, "
                        f"outside the trajectory; give {i_x - self.steps + 1} to {i_x}.")
        if self.continuation not in ("target", "source"):
            bad("continuation", "must be 'target' or 'source'.")
        if self.window > self.steps:
            bad("window", f"must be at most the number of steps ({self.steps}).")
        if self.lr <= 0:
            bad("lr", "must be positive.")
        if self.w_target + self.w_source == 0:
            bad("w_source", "w_target and w_source are both 0: nothing ties the edit to either image; give one of them "
                            "a weight above 0.")
        return self

    def edit_key(self) -> tuple:
        """The knobs that shape an edit (the first group): images whose attributes agree on them can be edited in
        one batch, sharing every UNet call."""
        return tuple(getattr(self, name) for name in EDIT_KNOBS)

    def replace(self, **changes) -> "Knobs":
        return Knobs(**{**asdict(self), **changes}).check()
