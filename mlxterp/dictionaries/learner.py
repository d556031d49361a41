"""The generic trainer's core: an :class:`Objective` (what is fitted and its loss, as pure functions of
arrays) and the one compiled step that trains it (forward, backward, optimizer update).

Anything fitted to activations (a dictionary, a tuned-lens translator, a probe) is an Objective. Its loss
is written per rank as a *sum over this rank's rows divided by a global normalizer* (the global batch
size, or a variance summed over every rank with :class:`Comm`), so that the sum of every rank's gradient
is the gradient of the whole batch: the step sums gradients over the ranks (``all_sum``) and a run on
several processes equals the single-process run up to float rounding.

The step, compiled once per objective and batch shape::

    (loss, aux), grads = value_and_grad(objective.loss)(params, state, batch, hyper, comm)
    grads = objective.project(params, comm.sum(grads))          # e.g. keep unit-norm decoder rows
    grads, norm = clip_by_global_norm(grads, max_grad_norm)
    params, moments = adam(params, grads, moments, hyper["lr"], hyper["t"], betas, eps)  # or SGD (Nesterov)
    params = objective.constrain(params)
    state = objective.update_state(params, state, aux, comm)   # e.g. dead-latent counters
    metrics = objective.metrics(params, state, aux, comm)            # scalars, every rank's combined

Everything is an input or an output of the compiled function; nothing is captured, so a step replayed
from a checkpoint gives the same bits.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Dict, List, Optional, Tuple

import mlx.core as mx

from .optim import Tree, adam, clip_by_global_norm, sgd_nesterov


class Comm:
    """Collectives over the ranks of a data-parallel run (identities alone).

    Each runs on the CPU stream and is usable inside the compiled step.

    Args:
        group: an ``mx.distributed.Group`` of more than one process, or None.

    Attributes:
        group: the group, or None.
        size: the number of ranks (1 alone).
        rank: this process's rank (0 alone).
    """

    def __init__(self, group: Optional[Any] = None):
        self.group = group
        self.size = 1 if group is None else group.size()
        self.rank = 0 if group is None else group.rank()

    def sum(self, x: mx.array) -> mx.array:
        """``x`` summed elementwise over the ranks (``all_sum``); the same shape and dtype."""
        return x if self.group is None else mx.distributed.all_sum(x, group=self.group, stream=mx.cpu)

    def min(self, x: mx.array) -> mx.array:
        """The elementwise minimum of ``x`` over the ranks (``all_min``); the same shape and dtype."""
        return x if self.group is None else mx.distributed.all_min(x, group=self.group, stream=mx.cpu)

    def gather(self, x: mx.array) -> mx.array:
        """Every rank's ``x`` concatenated along the first axis, in rank order."""
        return x if self.group is None else mx.distributed.all_gather(x, group=self.group, stream=mx.cpu)

    def sum_tree(self, tree: Tree) -> Tree:
        """:meth:`Comm.sum` of every array of a flat ``{name: array}`` dict (gradients)."""
        return tree if self.group is None else {k: self.sum(v) for k, v in tree.items()}

    @property
    def distributed(self) -> bool:
        """Whether there is a group (more than this process)."""
        return self.group is not None


class Objective(abc.ABC):
    """What a trainer fits: the base class of :class:`~mlxterp.dictionaries.DictionaryObjective`
    and of anything else trained by :func:`~mlxterp.dictionaries.fit` (tuned lens, probes).

    Attributes:
        name: shown in the progress bar and the history.
        keys: the batch entries it reads (site keys, labels).

    Subclasses implement :meth:`~Objective.init_params`, :meth:`~Objective.loss` and
    :meth:`~Objective.write_back`; the others have neutral defaults. :meth:`~Objective.loss`,
    :meth:`~Objective.project`, :meth:`~Objective.constrain`, :meth:`~Objective.update_state` and
    :meth:`~Objective.metrics` run inside the compiled step: pure functions of arrays.
    """

    name: str = "objective"
    keys: Tuple[str, ...] = ()

    @abc.abstractmethod
    def init_params(self) -> Tree:
        """The trainable arrays (the objective's own parameterization)."""

    def init_state(self) -> Tree:
        """Arrays the step carries and updates without gradients (counters, running averages)."""
        return {}

    def prepare(self, batch: Dict[str, mx.array], comm: Comm) -> None:
        """Data-dependent initialization from the first global batch (this rank's rows), before step 0."""

    def hyper(self, step: int, total: int) -> Dict[str, float]:
        """Per-step scalars for :meth:`~Objective.loss` besides ``lr`` and ``t`` (e.g. a coefficient's
        warm-up): ``{name: float}`` for 0-based ``step`` of ``total``, given to the step as float32 scalars."""
        return {}

    def variant(self, state: Tree) -> Any:
        """A hashable key choosing between compiled forms of the step from the current state (e.g. with or
        without the AuxK term): read between steps, so it costs one evaluation of what it reads."""
        return None

    @abc.abstractmethod
    def loss(self, params: Tree, state: Tree, batch: Dict[str, mx.array], hyper: Dict[str, mx.array],
             comm: Comm, variant: Any) -> Tuple[mx.array, Dict[str, mx.array]]:
        """``(loss, aux)``: this rank's share of the loss (see the module docstring) and arrays for
        :meth:`~Objective.update_state` and :meth:`~Objective.metrics` (no gradient flows through ``aux``).

        Args:
            params: the trainable arrays (:meth:`~Objective.init_params`'s names).
            state: the carried arrays (:meth:`~Objective.init_state`'s names).
            batch: this rank's rows, ``{key: (rows, width)}`` for each of :attr:`~Objective.keys`.
            hyper: ``lr``, ``t`` (the 1-based step) and :meth:`~Objective.hyper`'s scalars, float32.
            comm: the ranks' collectives.
            variant: :meth:`~Objective.variant`'s key for this step.
        """

    def project(self, params: Tree, grads: Tree) -> Tree:
        """The gradients (summed over the ranks) changed before clipping and the update (e.g. a component
        projected out); by default unchanged."""
        return grads

    def constrain(self, params: Tree) -> Tree:
        """The parameters after the update, put back in their allowed set (e.g. rows renormalized); by
        default unchanged."""
        return params

    def update_state(self, params: Tree, state: Tree, aux: Dict[str, mx.array], comm: Comm) -> Tree:
        """The state after the update, from the updated parameters and the loss's ``aux`` (combine
        per-rank values with ``comm``); by default unchanged."""
        return state

    def metrics(self, params: Tree, state: Tree, aux: Dict[str, mx.array], comm: Comm) -> Dict[str, mx.array]:
        """Scalars of this step, every rank's combined (``loss`` and ``grad_norm`` are added)."""
        return {}

    def postfix(self, history: Dict[str, List[float]]) -> Optional[str]:
        """What the progress bar shows of this objective's history (None: the dictionaries' L0, FVE, dead)."""
        return None

    @abc.abstractmethod
    def write_back(self, params: Tree, state: Tree) -> None:
        """Put the trained arrays back into the module being trained (outside the compiled step)."""


def make_step(objective: Objective, comm: Comm, variant: Any, betas: Tuple[float, float], eps: float,
              max_grad_norm: float, compile: bool = True, *, optimizer: str = "adam", momentum: float = 0.9,
              weight_decay: float = 0.0) -> Callable:
    """The training step of ``objective`` as one function (compiled unless ``compile=False``):
    ``step(params, moments, state, batch, hyper) -> (params, moments, state, metrics)``.

    ``optimizer``: ``"adam"`` (``betas``, ``eps``) or ``"sgd"`` (Nesterov ``momentum``, coupled
    ``weight_decay``: :func:`.optim.sgd_nesterov`)."""

    def update(params: Tree, grads: Tree, moments: Dict[str, Tree], hyper: Dict[str, mx.array]) -> tuple:
        if optimizer == "sgd":
            return sgd_nesterov(params, grads, moments, hyper["lr"], momentum, weight_decay)
        return adam(params, grads, moments, hyper["lr"], hyper["t"], betas, eps)

    def step(params: Tree, moments: Dict[str, Tree], state: Tree, batch: Dict[str, mx.array],
             hyper: Dict[str, mx.array]) -> tuple:
        def loss_fn(p: Tree) -> tuple:
            return objective.loss(p, state, batch, hyper, comm, variant)

        (loss, aux), grads = mx.value_and_grad(loss_fn)(params)
        grads = objective.project(params, comm.sum_tree(grads))
        grads, norm = clip_by_global_norm(grads, max_grad_norm)
        new_params, new_moments = update(params, grads, moments, hyper)
        new_params = objective.constrain(new_params)
        new_state = objective.update_state(new_params, state, aux, comm)
        metrics = dict(objective.metrics(new_params, new_state, aux, comm))
        metrics.update(loss=comm.sum(loss), grad_norm=norm)
        return new_params, new_moments, new_state, metrics

    return mx.compile(step) if compile else step
