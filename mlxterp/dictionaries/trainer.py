"""The training loop shared by everything fitted to activations: :func:`fit` trains objectives on a source.

Per step: one batch from the source (one forward for every objective, when live), then each objective's
compiled step (:func:`.learner.make_step`); a step whose data or loss is not finite raises before its
update is kept. The run folder (``out=``) holds ``run.json`` and an atomically replaced checkpoint
(:mod:`.checkpoint`), written every ``checkpoint_every`` steps (or ``checkpoint_seconds``) and at the end;
a rerun of the same call continues from it and ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import mlx.core as mx
import numpy as np
from tqdm.auto import tqdm

from .. import distributed as dist
from . import checkpoint
from .learner import Comm, Objective, make_step
from .optim import OPTIMIZERS, learning_rate, optimizer_init
from .sources import Source

Tree = Dict[str, mx.array]


@dataclasses.dataclass
class FitSettings:
    """The optimizer and schedule of a run (see :func:`mlxterp.train` for each field).

    Attributes:
        steps: the number of steps.
        batch_size: rows per step, over all ranks together.
        optimizer: ``"adam"`` (``betas``, ``eps``) or ``"sgd"`` (Nesterov ``momentum``, coupled ``weight_decay``).
        lr: the peak learning rate.
        seed: seed of the data order.
        warmup: fraction of the steps with a linear learning-rate warm-up.
        decay: fraction of the steps, at the end, with a linear decay to 0.
        max_grad_norm: the global gradient norm is clipped to this (0: no clipping).
        betas: Adam's moment decay rates.
        eps: Adam's epsilon.
        momentum: SGD's Nesterov momentum.
        weight_decay: SGD's coupled weight decay.
    """

    steps: int
    batch_size: int
    lr: float
    seed: int = 0
    warmup: float = 0.01
    decay: float = 0.2
    max_grad_norm: float = 1.0
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}, got {self.optimizer!r}")

    def identity(self) -> Dict[str, Any]:
        """Every field as a JSON-able dict (part of what a run folder records and a resumed run must match); the
        fields added with SGD appear only when set away from their defaults, so that runs begun before them keep
        the identity they were started with (and resume)."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        for name, default in (("optimizer", "adam"), ("momentum", 0.9), ("weight_decay", 0.0)):
            if out[name] == default:
                del out[name]
        return out


@dataclasses.dataclass
class FitState:
    """One objective's arrays during a run."""

    params: Tree
    moments: Dict[str, Tree]
    state: Tree
    history: Dict[str, List[float]]


@dataclasses.dataclass
class FitOutcome:
    """What :func:`fit` returns: each objective's final arrays and history, and how the run went.

    Attributes:
        states: one per objective: ``params``, Adam's ``moments`` (``{"m": ..., "v": ...}``), ``state``
            (arrays as the objective names them) and ``history`` (``{metric: [float per step]}``, every step
            of the run, resumed ones included, plus ``lr``).
        steps: the run's total number of steps.
        start: the step this call started from (0, or where a resumed run stood).
        forwards: the source's ``forwards`` count (model forwards run by this call, live), else None.
        seconds: wall time of this call's training (from after the run folder and its checkpoint were read).
    """

    states: List[FitState]
    steps: int
    start: int
    forwards: Optional[int]
    seconds: float
    end: Optional[int] = None  # the step reached (``steps`` unless paused by ``until``)

    @property
    def done(self) -> bool:
        """Whether the run reached its last step (False when ``until=`` paused it earlier)."""
        return self.end is None or self.end >= self.steps


def fit(objectives: Sequence[Objective], source: Source, settings: FitSettings, *,
        out: Optional[Union[str, Path]] = None, identity: Optional[Dict[str, Any]] = None, resume: bool = True,
        checkpoint_every: Optional[int] = None, checkpoint_seconds: float = 300.0, progress: bool = True,
        group: Any = None, compile: bool = True, desc: str = "training", until: Optional[int] = None) -> FitOutcome:
    """Train ``objectives`` for ``settings.steps`` steps of ``settings.batch_size`` rows from ``source``.

    Args:
        objectives: what is trained (each reads its :attr:`~.learner.Objective.keys` of every batch).
        source: the batches.
        settings: optimizer and schedule.
        out: the run folder (None: no checkpoints).
        identity: facts that define the run besides the settings and the source (e.g. the dictionaries'
            configs and initial weights); a folder holding another run is refused, naming what differs.
        resume: continue a run found in ``out`` (False: such a folder is an error).
        checkpoint_every: write a checkpoint every this many steps (None: every ``checkpoint_seconds``).
        checkpoint_seconds: the time between checkpoints when ``checkpoint_every`` is None; the last step
            always writes one.
        progress: show a progress bar (rank 0).
        group: the ``mx.distributed`` group to train data-parallel over (None: this process alone).
        compile: compile the step (False: the same functions run eagerly).
        desc: the progress bar's label.
        until: pause once the run stands at this step (None: train to the end): a checkpoint is written there,
            so a later call continues (to a later ``until``, or the end) with the weights an uninterrupted run
            has; the learning-rate schedule is the whole run's.

    Returns:
        A :class:`FitOutcome`. Each objective's :meth:`~Objective.write_back` has run, also when a step
        raised (with the last good arrays).

    Raises:
        ValueError: the folder holds another run (or any run with ``resume=False``), a corrupt checkpoint, or
            a batch with NaN or infinite values (every rank raises; the arrays from before it are kept).
        FloatingPointError: the loss is not finite (the arrays from before that step are kept).
    """
    comm = Comm(group)
    runner = _Runner(list(objectives), source, settings, comm, compile)
    folder = Path(out).expanduser() if out is not None else None
    run_id = {"settings": settings.identity(), "source": source.identity(), **(identity or {})}
    start, cursor, states, done = 0, None, None, False
    if folder is not None:
        checkpoint.prepare_folder(folder, run_id, resume, write=comm.rank == 0)
        dist.barrier(group)
        found = checkpoint.load(folder, checkpoint.digest(run_id), len(objectives))
        if found is not None:
            start, cursor, done = found["step"], found["cursor"], found["done"]
            states = [runner.restore(i, arrays) for i, arrays in enumerate(found["arrays"])]
    began = time.perf_counter()
    iterator = source.batches(settings.batch_size, settings.seed, comm, cursor, total=settings.steps)
    if states is None:
        first = next(iterator)  # the first batch initializes fresh weights from data, then is trained on
        _check_finite(first[0], comm)
        for obj in objectives:
            obj.prepare(first[0], comm)
        iterator = itertools.chain([first], iterator)
        states = [runner.fresh(obj) for obj in objectives]
    runner.states = states
    stop = settings.steps if until is None else max(start, min(int(until), settings.steps))
    try:
        if not done:
            writer = _Checkpointer(folder, checkpoint.digest(run_id), comm, checkpoint_every, checkpoint_seconds)
            runner.loop(iterator, start, stop, writer, progress and comm.rank == 0, desc)
    finally:  # the last good arrays, also when a step raised
        for obj, st in zip(objectives, runner.states):
            obj.write_back(st.params, st.state)
    return FitOutcome(runner.states, settings.steps, start, getattr(source, "forwards", None),
                      time.perf_counter() - began, settings.steps if done else stop)


def _check_finite(batch: Dict[str, mx.array], comm: Comm) -> None:
    """ValueError naming the first entry of the first batch holding NaN or infinite values on any rank (every
    rank raises, so none is left waiting in a collective)."""
    for key, value in batch.items():
        if comm.min(mx.isfinite(value).all().astype(mx.float32)).item() != 1.0:
            raise ValueError(f"the activations at {key!r} of the batch of step 0 hold NaN or infinite values; "
                             "nothing was trained (check the activation store or the model)")


class _Runner:
    """The per-step work of :func:`fit`: compiled steps per (objective, variant), metrics, checks."""

    def __init__(self, objectives: List[Objective], source: Source, settings: FitSettings, comm: Comm,
                 compile: bool):
        self.objectives, self.source, self.settings, self.comm = objectives, source, settings, comm
        self.compile = compile
        self._steps: Dict[Tuple[int, Any], Any] = {}
        self.states: List[FitState] = []

    def fresh(self, obj: Objective) -> FitState:
        params = obj.init_params()
        return FitState(params, optimizer_init(self.settings.optimizer, params), obj.init_state(), {})

    def restore(self, index: int, arrays: Dict[str, Tree]) -> FitState:
        """An objective's arrays from a checkpoint, each dict in the order a fresh start has: the compiled
        step flattens its inputs in that order, and sums over them (the gradient norm) in that order too."""
        obj = self.objectives[index]
        fresh = self.fresh(obj)
        groups = {"params": fresh.params, "m": fresh.moments["m"], "v": fresh.moments["v"], "state": fresh.state}
        ordered = {}
        for group, like in groups.items():
            found = arrays[group]
            if sorted(found) != sorted(like) or any(found[k].shape != like[k].shape for k in like):
                raise ValueError(f"the checkpoint's {group} for {obj.name!r} are {_shapes(found)}; expected "
                                 f"{_shapes(like)}: delete the checkpoint to start over")
            ordered[group] = {k: found[k] for k in like}
        history = {k: [float(x) for x in np.array(v)] for k, v in arrays["history"].items()}
        return FitState(ordered["params"], {"m": ordered["m"], "v": ordered["v"]}, ordered["state"], history)

    def step_fn(self, index: int, variant: Any) -> Any:
        key = (index, variant)
        if key not in self._steps:
            s = self.settings
            self._steps[key] = make_step(self.objectives[index], self.comm, variant, s.betas, s.eps, s.max_grad_norm,
                                         compile=self.compile, optimizer=s.optimizer, momentum=s.momentum,
                                         weight_decay=s.weight_decay)
        return self._steps[key]

    def run_step(self, step: int, batch: Dict[str, mx.array], states: List[FitState]) -> List[tuple]:
        """Every objective's step on ``batch`` (lazy: evaluated by the caller)."""
        s = self.settings
        lr = learning_rate(step, s.steps, s.lr, s.warmup, s.decay)
        outs = []
        for i, (obj, st) in enumerate(zip(self.objectives, states)):
            hyper = {"lr": mx.array(lr, dtype=mx.float32), "t": mx.array(step + 1, dtype=mx.float32),
                     **{k: mx.array(v, dtype=mx.float32) for k, v in obj.hyper(step, s.steps).items()}}
            data = {k: batch[k] for k in obj.keys}
            outs.append(self.step_fn(i, obj.variant(st.state))(st.params, st.moments, st.state, data, hyper))
        return outs

    def loop(self, iterator: Any, start: int, stop: int, writer: "_Checkpointer", show: bool, desc: str) -> None:
        """Steps ``start`` to ``stop``; :attr:`states` holds the last good arrays after every step."""
        s = self.settings
        bar = tqdm(total=s.steps * s.batch_size, initial=start * s.batch_size, unit="tok", unit_scale=True,
                   desc=desc, disable=not show, smoothing=0.1)
        try:
            for step in range(start, stop):
                batch, cursor = next(iterator)
                outs = self.run_step(step, batch, self.states)
                mx.eval(outs)
                values = [self._checked(step, obj, out[3]) for obj, out in zip(self.objectives, outs)]
                self.states = [self._adopt(step, st, out, v) for st, out, v in zip(self.states, outs, values)]
                bar.update(s.batch_size)
                bar.set_postfix_str(_postfix(self.objectives, self.states), refresh=False)
                writer.maybe(step + 1, cursor, self.states, done=step + 1 == s.steps, pause=step + 1 == stop)
        finally:
            bar.close()

    def _checked(self, step: int, obj: Objective, metrics: Dict[str, mx.array]) -> Dict[str, float]:
        """The step's metrics as floats; raises (before any objective adopts the step) when its data or its
        loss is not finite (both combined over the ranks, so every rank raises)."""
        values = {k: float(v.item()) for k, v in metrics.items()}
        if values.get("finite", 1.0) != 1.0:
            raise ValueError(f"{obj.name}: the batch of step {step} holds NaN or infinite activations at "
                             f"{', '.join(obj.keys)}; the dictionary keeps its weights from before this step")
        if not math.isfinite(values["loss"]):
            raise FloatingPointError(f"{obj.name}: the loss became {values['loss']} at step {step} (the learning rate "
                                     f"{self.settings.lr:g} may be too high); the weights from before this step are kept")
        return values

    def _adopt(self, step: int, st: FitState, out: tuple, values: Dict[str, float]) -> FitState:
        params, moments, state, _ = out
        history = st.history
        for k, v in values.items():
            if k != "finite":
                history.setdefault(k, []).append(v)
        rate = learning_rate(step, self.settings.steps, self.settings.lr, self.settings.warmup, self.settings.decay)
        history.setdefault("lr", []).append(float(np.float32(rate)))  # float32, as stored in a checkpoint
        return FitState(params, moments, state, history)


def _shapes(tree: Tree) -> Dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in sorted(tree.items())}


def _postfix(objectives: List[Objective], states: List[FitState]) -> str:
    own = [obj.postfix(st.history) for obj, st in zip(objectives, states)]
    if all(text is not None for text in own):
        return " | ".join(own[:3]) + (f" (+{len(own) - 3})" if len(own) > 3 else "")

    def last(st: FitState, key: str) -> float:
        values = st.history.get(key)
        return values[-1] if values else float("nan")

    shown = states[:3]
    l0 = "/".join(f"{last(st, 'l0'):.1f}" for st in shown)
    fve = "/".join(f"{last(st, 'fve'):.3f}" for st in shown)
    dead = "/".join(f"{100 * last(st, 'dead'):.0f}%" for st in shown)
    more = f" (+{len(states) - 3})" if len(states) > 3 else ""
    return f"L0 {l0} FVE {fve} dead {dead}{more}"


class _Checkpointer:
    """Writes the checkpoint on rank 0 when due (every ``every`` steps, or every ``seconds``) and at the end."""

    def __init__(self, folder: Optional[Path], run_digest: str, comm: Comm, every: Optional[int], seconds: float):
        self.folder, self.digest, self.comm = folder, run_digest, comm
        self.every, self.seconds = every, seconds
        self.last = time.monotonic()

    def maybe(self, step: int, cursor: Any, states: List[FitState], done: bool, pause: bool = False) -> None:
        if self.folder is None:
            return
        due = done or pause or (step % self.every == 0 if self.every else time.monotonic() - self.last >= self.seconds)
        if not due:
            return
        if self.comm.rank == 0:
            arrays = [{"params": st.params, "m": st.moments["m"], "v": st.moments["v"], "state": st.state,
                       "history": {k: mx.array(np.array(v, dtype=np.float32)) for k, v in st.history.items()}}
                      for st in states]
            checkpoint.save(self.folder, step, cursor, self.digest, done, arrays)
        self.last = time.monotonic()
