"""Every choice of the editing method, in one frozen dataclass, recorded in each attribute file.

The first group shapes the edit (which steps, how the pair is sampled, how y is built and continued)
and is shared by learning and applying: attributes combined in one edit must agree on the trajectory
knobs (steps, t_edit, dtau, guidance). The second group is the learning's (the MLP and its four
losses, runtime/editing/avi.py). The defaults were chosen on benchmarks/bench_edit_quality.py and
benchmarks/sweep_edit_knobs.py; `svdedit learn --help` lists every knob as an option.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from svdedit.runtime.errors import SvdeditError


#: the knobs of the edit, as opposed to those of the learning
EDIT_KNOBS = ("steps", "guidance", "t_edit", "dtau", "k", "tail", "continuation", "window", "inversion_guidance",
              "uncaptioned_guidance")


@dataclass(frozen=True)
class Knobs:
    """Every choice of the method; the defaults were chosen on benchmarks/bench_edit_quality.py."""

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

    def check(self) -> "Knobs":
        def bad(name, why):
            raise SvdeditError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: {why}")
        if not 0.0 < self.t_edit < 1.0:
            bad("t_edit", "must be a fraction of the schedule strictly between 0 and 1 (e.g. 0.5).")
        if self.k < 1:
            bad("k", "must be at least 1.")
        if self.continuation not in ("target", "source"):
            bad("continuation", "must be 'target' or 'source'.")
        if self.window < 1:
            bad("window", "must be at least 1.")
        if self.calibration_seeds < 0:
            bad("calibration_seeds", "must be 0 (no calibration) or more.")
        if self.hidden < 1 or self.iters < 0 or self.lr <= 0:
            bad("hidden" if self.hidden < 1 else "iters" if self.iters < 0 else "lr", "must be positive.")
        for name in ("w_target", "w_source", "w_target_sv", "w_source_sv"):
            if getattr(self, name) < 0:
                bad(name, "a loss weight cannot be negative (0 switches the loss off).")
        if self.w_target + self.w_source == 0:
            raise SvdeditError("--w-target and --w-source are both 0: nothing ties the edit to either image.")
        return self

    def edit_key(self) -> tuple:
        """The knobs that shape an edit (the first group): images whose attributes agree on them can be edited in
        one batch, sharing every UNet call."""
        return tuple(getattr(self, name) for name in EDIT_KNOBS)

    def replace(self, **changes) -> "Knobs":
        return Knobs(**{**asdict(self), **changes}).check()
