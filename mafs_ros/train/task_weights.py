"""Task weighting of the Stage-II total loss L = w_fus·L_fus + w_seg·(L_seg + λ_kd·L_kd)
(docs/MODEL.md, Losses).

The paper's "max-min fairness allocation principle" formula is not available; `MaxMinFairness` is our
[design] reconstruction and sits behind the `TaskWeighting` interface so that it can be replaced
once the paper is read. `DynamicWeightAverage` (MTAN's DWA, the code base MAFS's utilities come from) and
`FixedWeights` are the ablation baselines.

Protocol: the trainer reads `weights()` at the start of every step (constant within an epoch), and calls
`end_epoch(mean_losses)` once per epoch with the epoch-mean loss of every task. `state_dict()` holds plain
Python values so that a checkpoint resumes the exact same weights.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_TASKS = ("fus", "seg")


class TaskWeighting(ABC):
    """Strategy giving one weight per task, updated from epoch-mean task losses."""

    name: str

    def __init__(self, tasks: Sequence[str] = DEFAULT_TASKS) -> None:
        if len(tasks) < 1 or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must be distinct names, got {tasks}")
        self.tasks = tuple(tasks)

    @abstractmethod
    def weights(self) -> dict[str, float]:
        """Weight of every task for the current epoch."""

    @abstractmethod
    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        """Record the epoch-mean loss of every task (extra keys are ignored) and update the weights."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the exact weights."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict` of the same strategy."""

    def _check_kind(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != self.name:
            raise ValueError(f"task-weighting state of kind {state.get('kind')!r} cannot resume {self.name!r}")


class FixedWeights(TaskWeighting):
    """Constant weights (an ablation baseline; (1, 1) by default, i.e. PSFusion's plain sum)."""

    name = "fixed"

    def __init__(self, fus: float = 1.0, seg: float = 1.0) -> None:
        super().__init__(DEFAULT_TASKS)
        self._weights = {"fus": float(fus), "seg": float(seg)}

    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        """Nothing to update."""

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.name, "weights": dict(self._weights)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_kind(state)
        self._weights = {task: float(state["weights"][task]) for task in self.tasks}


class _RateWeighting(TaskWeighting):
    """Weights from the descent rates r_k(e) = L̄_k(e−1) / L̄_k(e−2) of the two previous epochs.

    Until two epochs have been recorded every weight is 1 (r_k = 1 for e ≤ 2, as in MTAN).
    """

    def __init__(self, tasks: Sequence[str] = DEFAULT_TASKS) -> None:
        super().__init__(tasks)
        self._history: list[dict[str, float]] = []  # the last two epoch means, oldest first
        self._weights = {task: 1.0 for task in self.tasks}

    @abstractmethod
    def _weights_from_rates(self, rates: list[float]) -> list[float]:
        """Map the descent rates (in task order) to weights (in task order)."""

    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        missing = [task for task in self.tasks if task not in mean_losses]
        if missing:
            raise KeyError(f"end_epoch needs the mean loss of tasks {missing}")
        losses = {task: float(mean_losses[task]) for task in self.tasks}
        bad = {task: value for task, value in losses.items() if not math.isfinite(value)}
        if bad:
            raise ValueError(f"non-finite epoch-mean losses: {bad}")
        self._history = [*self._history, losses][-2:]
        self._update()

    def _update(self) -> None:
        if len(self._history) < 2:
            self._weights = {task: 1.0 for task in self.tasks}
            return
        older, newer = self._history
        # A task whose older mean is 0 (e.g. no labelled sample in that epoch) has no defined rate: use the
        # neutral r = 1 of the first epochs rather than dividing by zero.
        rates = [newer[t] / older[t] if older[t] > 0.0 else 1.0 for t in self.tasks]
        self._weights = dict(zip(self.tasks, self._weights_from_rates(rates)))

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.name, "tasks": list(self.tasks), "history": [dict(h) for h in self._history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_kind(state)
        if tuple(state["tasks"]) != self.tasks:
            raise ValueError(f"state was saved for tasks {tuple(state['tasks'])}, not {self.tasks}")
        self._history = [{task: float(h[task]) for task in self.tasks} for h in state["history"]][-2:]
        self._update()


def _softmax(values: list[float], temperature: float) -> list[float]:
    top = max(values)
    exps = [math.exp((v - top) / temperature) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


class DynamicWeightAverage(_RateWeighting):
    """MTAN's Dynamic Weight Average: w_k = K·softmax_k(r_k / T), K = number of tasks, T = 2."""

    name = "dwa"

    def __init__(self, tasks: Sequence[str] = DEFAULT_TASKS, temperature: float = 2.0) -> None:
        if temperature <= 0.0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        super().__init__(tasks)

    def _weights_from_rates(self, rates: list[float]) -> list[float]:
        k = len(rates)
        return [k * p for p in _softmax(rates, self.temperature)]


class MaxMinFairness(_RateWeighting):
    """Max-min fairness task weighting, our [design] reconstruction (docs/MODEL.md, Losses):

        r̂_k = (r_k − min_j r_j) / (max_j r_j − min_j r_j + eps)
        w_k = K·exp(r̂_k/τ) / Σ_j exp(r̂_j/τ),  K = number of tasks, τ = 2
        clip each w_k to [w_min, w_max] = [0.2, 1.8], then rescale so that Σ_k w_k = K.

    The lagging (slowest-descending, largest r) task gets the largest weight; equal rates give equal
    weights. With two tasks and τ = 2 the weights are 1.245 / 0.755 whenever the rates differ. The final
    rescale can move a clipped weight slightly outside the clip range when K > 2; the sum K is exact.
    """

    name = "maxmin"

    def __init__(
        self,
        tasks: Sequence[str] = DEFAULT_TASKS,
        temperature: float = 2.0,
        clip: tuple[float, float] = (0.2, 1.8),
        eps: float = 1e-8,
    ) -> None:
        if temperature <= 0.0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 < clip[0] <= clip[1]:
            raise ValueError(f"clip must satisfy 0 < low <= high, got {clip}")
        self.temperature = temperature
        self.clip = (float(clip[0]), float(clip[1]))
        self.eps = eps
        super().__init__(tasks)

    def _weights_from_rates(self, rates: list[float]) -> list[float]:
        k = len(rates)
        low, high = min(rates), max(rates)
        normalised = [(r - low) / (high - low + self.eps) for r in rates]
        weights = [k * p for p in _softmax(normalised, self.temperature)]
        clipped = [min(max(w, self.clip[0]), self.clip[1]) for w in weights]
        total = sum(clipped)
        return [k * w / total for w in clipped]


_STRATEGIES: dict[str, type[TaskWeighting]] = {
    FixedWeights.name: FixedWeights,
    DynamicWeightAverage.name: DynamicWeightAverage,
    MaxMinFairness.name: MaxMinFairness,
}


def build_task_weighting(name: str, **kwargs: Any) -> TaskWeighting:
    """Build a strategy by name: "fixed" (fus, seg), "dwa" (tasks, temperature) or "maxmin"
    (tasks, temperature, clip, eps); keyword arguments go to the constructor."""
    try:
        cls = _STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown task weighting {name!r}; choose one of {sorted(_STRATEGIES)}") from None
    return cls(**kwargs)
