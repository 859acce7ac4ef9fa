"""Training that never dies silently: skip steps with a non-finite loss or gradient, stop cleanly when it persists.

nerfstudio 1.1.5 sums the loss dict, back-propagates and steps every optimiser with no finiteness check (the
GradScaler only skips steps on CUDA with mixed precision). One NaN step poisons Adam's moments for good, so the
guard here works before any parameter or optimiser state changes, without forking the trainer loop:

* the pipeline hands each step's loss dict to :meth:`NonFiniteGuard.begin_step`;
* an ``Optimizer.register_step_pre_hook`` on every optimiser decides, once per step and for all parameter groups
  together, whether the step is sound; if not, it sets every ``p.grad = None`` of the optimiser about to step, so
  Adam leaves those parameters and their moments untouched (it skips parameters without a gradient);
* :meth:`NonFiniteGuard.end_step` (from an AFTER_TRAIN_ITERATION callback) counts skipped steps and reports
  which loss term and which parameter group went non-finite; :meth:`NonFiniteGuard.stop_if_diverged` saves a
  checkpoint after ``max_consecutive`` skipped steps in a row and stops with one line and exit code
  :data:`pmni_method.errors.EXIT_DIVERGED`.

A step is skipped as a whole: updating some groups from a step whose loss or other gradients are garbage would
leave the model in a state no healthy step produces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor

from nerfstudio.utils.rich_utils import CONSOLE

from pmni_method.errors import EXIT_DIVERGED, print_error


@dataclass
class StepVerdict:
    """What was non-finite in one training step (empty lists: the step was sound)."""

    step: int
    """Training step."""
    losses: List[str] = field(default_factory=list)
    """Loss-dict keys whose value was NaN or infinite."""
    groups: List[str] = field(default_factory=list)
    """Parameter groups with a NaN or infinite gradient."""

    @property
    def skipped(self) -> bool:
        return bool(self.losses or self.groups)

    def describe(self) -> str:
        parts = []
        if self.losses:
            parts.append("loss " + ", ".join(self.losses))
        if self.groups:
            parts.append("gradients of " + ", ".join(self.groups))
        return "; ".join(parts)


class NonFiniteGuard:
    """Skips optimiser steps whose loss terms or gradients are not finite; see the module docstring.

    ``param_groups`` maps group name -> parameters (nerfstudio's ``Optimizers.parameters``); ``check_gradients`` is
    off when a CUDA GradScaler is active, since overflowing scaled gradients are its job (it skips those steps and
    lowers the scale) and must not count as divergence. ``save_checkpoint(step)`` returns the written path or None.
    """

    def __init__(
        self,
        optimizers: Dict[str, torch.optim.Optimizer],
        param_groups: Dict[str, List[torch.nn.Parameter]],
        max_consecutive: int,
        check_gradients: bool = True,
        save_checkpoint: Optional[Callable[[int], Optional[Path]]] = None,
        before_exit: Optional[Callable[[], None]] = None,
    ) -> None:
        self.optimizers = optimizers
        self.param_groups = param_groups
        self.max_consecutive = int(max_consecutive)
        self.check_gradients = check_gradients
        self.save_checkpoint = save_checkpoint
        self.before_exit = before_exit
        self.skipped_total = 0
        self.consecutive = 0
        self.last_verdict: Optional[StepVerdict] = None
        self._step: Optional[int] = None
        self._loss_names: List[str] = []
        self._loss_finite: Optional[Tensor] = None
        self._verdict: Optional[StepVerdict] = None
        self._handles = [opt.register_step_pre_hook(self._before_optimizer_step) for opt in optimizers.values()]

    def detach(self) -> None:
        """Remove the optimiser hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def begin_step(self, step: int, loss_dict: Dict[str, Tensor]) -> None:
        """Record this step's loss terms; the check itself waits for the first optimiser (one device sync a step)."""
        self._step = step
        self._verdict = None
        self._loss_names = list(loss_dict)
        values = [torch.isfinite(v.detach()).all() for v in loss_dict.values()]
        self._loss_finite = torch.stack(values) if values else None

    def verdict(self) -> StepVerdict:
        """The current step's verdict, computed on first use."""
        if self._verdict is not None:
            return self._verdict
        device = self._loss_finite.device if self._loss_finite is not None else torch.device("cpu")
        flags: List[Tensor] = []
        if self._loss_finite is not None:
            flags.append(self._loss_finite)
        group_names: List[str] = []
        if self.check_gradients:
            for name, params in self.param_groups.items():
                grads = [p.grad for p in params if p.grad is not None]
                if grads:
                    group_names.append(name)
                    # NaN and inf survive a sum, and a sum is several times cheaper than isfinite().all() on a
                    # hash table; finite gradients large enough to overflow it would be a divergence anyway.
                    total = torch.stack([g.detach().sum() for g in grads]).sum()
                    flags.append(torch.isfinite(total).reshape(1).to(device))
        finite = torch.cat(flags).tolist() if flags else []
        n_loss = len(self._loss_names) if self._loss_finite is not None else 0
        self._verdict = StepVerdict(
            step=-1 if self._step is None else self._step,
            losses=[name for name, ok in zip(self._loss_names, finite[:n_loss]) if not ok],
            groups=[name for name, ok in zip(group_names, finite[n_loss:]) if not ok],
        )
        return self._verdict

    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        if self._step is None:
            return None  # a step outside the training loop: not ours to judge
        if self.verdict().skipped:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
        return None

    def end_step(self, step: int) -> Optional[StepVerdict]:
        """Count the step; return its verdict if it was skipped (then call :meth:`stop_if_diverged`)."""
        if self._step is None:
            return None
        verdict = self.verdict()
        self._step, self._loss_finite, self._verdict = None, None, None
        if not verdict.skipped:
            self.consecutive = 0
            return None
        self.skipped_total += 1
        self.consecutive += 1
        self.last_verdict = verdict
        CONSOLE.print(
            f"step {step}: non-finite {verdict.describe()}; step skipped "
            f"({self.skipped_total} skipped in total, {self.consecutive} in a row)",
            style="yellow",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return verdict

    def stop_if_diverged(self, step: int) -> None:
        """After ``max_consecutive`` skipped steps in a row: save a checkpoint, print one line, exit non-zero."""
        if self.consecutive < self.max_consecutive or self.last_verdict is None:
            return
        saved = self.save_checkpoint(step) if self.save_checkpoint is not None else None
        where = f"last good state saved to {saved}" if saved is not None else "no checkpoint could be written"
        if self.before_exit is not None:
            self.before_exit()
        print_error(
            f"training stopped at step {step}: {self.consecutive} steps in a row had a non-finite "
            f"{self.last_verdict.describe()}; {where}. Lower the learning rates or check the data, then continue "
            "with --resume True."
        )
        raise SystemExit(EXIT_DIVERGED)
