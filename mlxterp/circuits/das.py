"""Distributed alignment search (DAS; Geiger et al. 2023): a learned linear subspace of one site's activation
that carries a causal variable.

``DAS(site, position, dim)`` is a ``dim``-dimensional subspace of the activation at ``site`` (any name an
``interventions=`` entry takes: ``layers.N.resid_pre`` / ``resid_mid`` / ``resid_post``, ``layers.N.attn``,
``layers.N.mlp``, ...) at token ``position`` (one or several). It is trained by interchange interventions:
for pairs of a base and a source prompt, the subspace's coordinates at the positions are taken from the
source run into the base run, and the intervened run's last-position logits are pushed toward a label, the
token the model should predict if the subspace carries the variable (cross-entropy). The subspace is the
first ``dim`` columns of a rotation kept orthogonal by construction (Householder vectors, see
:mod:`.das_rotation`). Interchange-intervention accuracy (IIA) is the share of held-out pairs whose
intervened run predicts the label.

Everything runs on programs (:mod:`.das_program`): the source activations come from one program, the
intervened base run is a program whose params are the rotation and the source activations, and one
training step (both programs, the gradient, the optimizer update) is one compiled function. Several DAS
are trained together (:meth:`DAS.train_many`) as variants of one forward, each born at its site's layer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np

from ..analysis.validate import check_positive_int
from .das_data import Site, check_dim, check_position, interchange_pairs, prompt_tokens, site_on
from .das_rotation import DASIntervention, householder, initial_vectors
from .das_train import Trainer, fit, predictions, source_program

if TYPE_CHECKING:
    from ..model import InterpretableModel

FORMAT = "mlxterp.das"
VERSION = 1
DEFAULT_LR = 0.05
DEFAULT_BATCH = 32  # pairs per training step when batch_size is not given (fewer if there are fewer pairs)


class DAS:
    """A DAS subspace at one site (see the module docstring).

    Args:
        site: where: a layer's residual value (``"layers.12.resid_post"``; ``"layers.12"`` is its output),
            its attention or MLP output (``"layers.12.attn"``, ``"layers.12.mlp"``), or any module whose
            values are ``(batch, seq, width)``.
        position: the token position(s) intervened on (negative count from the end; ``-1``: the last token).
            Base and source prompts must have one token length, so a position is the same token in both.
        dim: the subspace's dimension, 1 to the site's width.
        seed: seeds the initial rotation.

    Attributes:
        width: the site's width once trained or loaded (``None`` before).
        steps: training steps taken so far.
    """

    def __init__(self, site: str, position: Union[int, Sequence[int]] = -1, dim: int = 1, *, seed: int = 0):
        if not isinstance(site, str):
            raise TypeError(f"site: expected a name such as 'layers.3.resid_post', got {type(site).__name__} {site!r}")
        self.site = site
        self.position = check_position(position)
        self.dim = check_dim(dim)
        self.seed = check_seed(seed)
        self.width: Optional[int] = None
        self.steps = 0
        self._vectors: Optional[mx.array] = None

    # -- the subspace --------------------------------------------------------------------------
    @property
    def vectors(self) -> mx.array:
        """The Householder vectors ``(dim, width)``, float32, that parametrise the rotation (what training
        updates)."""
        if self._vectors is None:
            raise RuntimeError(f"{self!r} has no subspace yet: train it (das.train(model, base_prompts, "
                               "source_prompts, labels)) or load one (DAS.load(path))")
        return self._vectors

    @property
    def rotation(self) -> mx.array:
        """The subspace's orthonormal basis ``(width, dim)``, float32: the first ``dim`` columns of the rotation."""
        return householder(self.vectors)

    @property
    def direction(self) -> mx.array:
        """The subspace's unit vector ``(width,)``, float32 (``dim=1`` only)."""
        if self.dim != 1:
            raise ValueError(f"direction is the basis of a 1-dimensional subspace; this one has dim={self.dim}: "
                             "use das.rotation, (width, dim)")
        return self.rotation[:, 0]

    # -- training ------------------------------------------------------------------------------
    def train(self, model: "InterpretableModel", base_prompts: Any, source_prompts: Any, labels: Any, *,
              steps: int = 100, lr: Optional[float] = None, batch_size: Optional[int] = None, seed: int = 0,
              optimizer: Any = None, progress: bool = False) -> np.ndarray:
        """Train the subspace by interchange interventions (continuing from the current one, if any).

        Args:
            model: the InterpretableModel (never modified).
            base_prompts: the prompts run with the intervention (a list of str, token lists, or an integer
                token array ``(n, seq)``), all of one token length.
            source_prompts: one per base prompt, of the same length: where the subspace's values come from.
            labels: one per pair, the token the model should predict after the intervention (ids, or
                single-token strings such as ``" Paris"``).
            steps: optimizer steps, each on ``batch_size`` pairs (batches cycle through shuffled pairs).
            lr: Adam's learning rate (default 0.05: the Householder vectors start with entries drawn from
                N(0, 1), so an early step turns the subspace by at most about ``lr`` radians).
            batch_size: pairs per step, at most the number of pairs (default: all of them, at most 32).
            seed: seeds the batch order.
            optimizer: an ``mlx.optimizers`` optimizer instead of Adam (then ``lr`` is not given).
            progress: show a progress bar.

        Returns:
            Each step's loss, a float64 numpy array ``(steps,)``: the batch's mean cross-entropy of the label
            at the last position, in nats (computed on float32 logits, before that step's update).
        """
        return DAS.train_many([self], model, base_prompts, source_prompts, labels, steps=steps, lr=lr,
                              batch_size=batch_size, seed=seed, optimizer=optimizer, progress=progress)[:, 0]

    @staticmethod
    def train_many(dases: Sequence["DAS"], model: "InterpretableModel", base_prompts: Any, source_prompts: Any,
                   labels: Any, *, steps: int = 100, lr: Optional[float] = None, batch_size: Optional[int] = None,
                   seed: int = 0, optimizer: Any = None, progress: bool = False) -> np.ndarray:
        """Train several DAS on the same pairs together: one forward per step runs every one of them (each a
        block of rows of one program, born at its site's layer). Each gets what training it alone gives.
        Arguments as :meth:`train`.

        Returns:
            Each step's loss per DAS, a float64 numpy array ``(steps, len(dases))`` (mean cross-entropy in
            nats, as :meth:`train`).
        """
        dases = check_dases(dases)
        pairs = interchange_pairs(model, base_prompts, source_prompts, labels)
        steps = check_positive_int(steps, "steps")
        batch_size = check_positive_int(batch_size, "batch_size", allow_none=True, upper=len(pairs))
        batch_size = min(DEFAULT_BATCH, len(pairs)) if batch_size is None else batch_size
        optimizer = make_optimizer(lr, optimizer)
        sites = [das._bind(model, pairs.base) for das in dases]
        trainer = Trainer(model, sites, pairs, optimizer)
        vectors = {f"site_{j}": das._initial_vectors(site) for j, (das, site) in enumerate(zip(dases, sites))}

        def keep(new: dict) -> None:  # after every finished step: an interrupt leaves the last one
            for j, das in enumerate(dases):
                das._vectors, das.width = new[f"site_{j}"], sites[j].width
                das.steps += 1

        return fit(trainer, vectors, pairs, steps, batch_size, check_seed(seed), keep, progress)

    # -- evaluation ----------------------------------------------------------------------------
    def iia(self, model: "InterpretableModel", base_prompts: Any, source_prompts: Any, labels: Any, *,
            batch_size: int = 32) -> float:
        """Interchange-intervention accuracy: the share of pairs whose intervened run's top prediction at the
        last position is the label, a fraction in [0, 1] (arguments as :meth:`train`)."""
        return float(DAS.iia_many([self], model, base_prompts, source_prompts, labels, batch_size=batch_size)[0])

    @staticmethod
    def iia_many(dases: Sequence["DAS"], model: "InterpretableModel", base_prompts: Any, source_prompts: Any,
                 labels: Any, *, batch_size: int = 32) -> np.ndarray:
        """The IIA of several DAS on the same pairs, a float64 numpy array ``(len(dases),)`` of fractions in
        [0, 1], in one forward per batch."""
        dases = check_dases(dases)
        pairs = interchange_pairs(model, base_prompts, source_prompts, labels)
        batch_size = check_positive_int(batch_size, "batch_size")
        sites = [das._bind(model, pairs.base, trained=True) for das in dases]
        predicted = predictions(model, sites, [das.rotation for das in dases], pairs, min(batch_size, len(pairs)))
        return (predicted == np.array(pairs.labels)[None]).mean(axis=1)

    # -- use in traces, programs and generation ------------------------------------------------
    def source_activations(self, model: "InterpretableModel", prompts: Any) -> mx.array:
        """The site's values at the positions in ``prompts`` (of one token length): an ``mx.array``
        ``(n, len(position), width)`` in the site's dtype, what :meth:`intervention` takes."""

        tokens = prompt_tokens(model, prompts, "prompts")
        site = self._bind(model, tokens)
        return source_program(model, [site], tokens)(tokens)[0]

    def intervention(self, source: mx.array) -> DASIntervention:
        """The interchange intervention for ``interventions={das.site: das.intervention(source)}`` in traces
        (and so programs) and generation: the subspace's coordinates at the positions (resolved on each
        activation's own token axis) replaced by ``source``'s.

        Args:
            source: source activations ``(n or 1, positions, width)`` (from :meth:`source_activations`);
                ``(positions, width)`` or, for one position, ``(width,)`` apply to every row.
        """
        rotation = self.rotation
        if not isinstance(source, mx.array):
            raise TypeError(f"source: expected an mx.array of source activations, got {type(source).__name__}")
        n_pos = len(self.position)
        shape = tuple(source.shape)
        if shape[-1:] != (self.width,) or source.ndim > 3 or (source.ndim >= 2 and shape[-2] != n_pos) or (
                source.ndim == 1 and n_pos != 1):
            raise ValueError(f"source: expected activations of shape (n, {n_pos}, {self.width}) (positions "
                             f"{list(self.position)} of width {self.width}), got {shape}")
        source = source.reshape((-1, n_pos, self.width)) if source.ndim < 3 else source
        return DASIntervention(rotation, source, self.position)

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: Union[str, Path]) -> Path:
        """Write the subspace to a ``.safetensors`` file (the Householder vectors and the basis, with the
        site, positions, dimension and width as JSON metadata); returns the path written."""
        target = Path(path)
        if target.suffix != ".safetensors":
            target = target.with_name(target.name + ".safetensors")
        if not target.parent.is_dir():
            raise FileNotFoundError(f"cannot save DAS to {str(target)!r}: directory {str(target.parent)!r} "
                                    "does not exist")
        config = {"format": FORMAT, "version": VERSION, "site": self.site, "position": list(self.position),
                  "dim": self.dim, "width": self.width, "seed": self.seed, "steps": self.steps}
        mx.save_safetensors(str(target), {"vectors": self.vectors, "rotation": self.rotation},
                            metadata={FORMAT: json.dumps(config)})
        return target

    @classmethod
    def load(cls, path: Union[str, Path]) -> "DAS":
        """A DAS written by :meth:`save`."""
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"DAS file not found: {str(source)!r}")
        arrays, metadata = mx.load(str(source), format="safetensors", return_metadata=True)
        if FORMAT not in metadata or "vectors" not in arrays:
            raise ValueError(f"{str(source)!r} is not a DAS file written by DAS.save (no {FORMAT!r} metadata)")
        config = json.loads(metadata[FORMAT])
        if config.get("version") != VERSION:
            raise ValueError(f"{str(source)!r} has DAS format version {config.get('version')!r}; this mlxterp "
                             f"reads version {VERSION}")
        das = cls(config["site"], config["position"], config["dim"], seed=config["seed"])
        das._vectors, das.width, das.steps = arrays["vectors"], int(config["width"]), int(config["steps"])
        if tuple(das._vectors.shape) != (das.dim, das.width):
            raise ValueError(f"{str(source)!r}: vectors of shape {tuple(das._vectors.shape)}, expected "
                             f"({das.dim}, {das.width})")
        return das

    # -- internals -----------------------------------------------------------------------------
    def _bind(self, model: "InterpretableModel", tokens: mx.array, trained: bool = False) -> Site:
        """This DAS's site resolved on ``model`` for prompts of ``tokens``' shape (checked: site, dim,
        positions, and the width of a subspace already trained)."""
        if trained:
            self.vectors  # raises if there is no subspace yet
        site = site_on(model, self.site, self.position, self.dim, tokens)
        if self.width is not None and site.width != self.width:
            raise ValueError(f"{self!r} was trained on activations of width {self.width}; site {self.site!r} of "
                             f"this model has width {site.width}")
        return site

    def _initial_vectors(self, site: Site) -> mx.array:
        return self._vectors if self._vectors is not None else initial_vectors(self.dim, site.width, self.seed)

    def __repr__(self) -> str:
        width = f", width={self.width}, trained {self.steps} steps" if self.width is not None else ", untrained"
        position = self.position[0] if len(self.position) == 1 else list(self.position)
        return f"DAS(site={self.site!r}, position={position}, dim={self.dim}{width})"


def check_dases(dases: Any) -> list:
    """A non-empty list of distinct DAS objects."""
    if isinstance(dases, DAS) or not isinstance(dases, (list, tuple)) or not dases:
        raise TypeError(f"dases: expected a non-empty list of DAS objects, got {dases!r}")
    bad = [d for d in dases if not isinstance(d, DAS)]
    if bad:
        raise TypeError(f"dases: {bad[0]!r} is a {type(bad[0]).__name__}, not a DAS")
    if len({id(d) for d in dases}) != len(dases):
        raise ValueError("dases: the same DAS object is listed twice; each is trained once per step")
    return list(dases)


def check_seed(seed: Any) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed: expected an int, got {seed!r}")
    return int(seed)


def make_optimizer(lr: Any, optimizer: Any) -> Any:
    """Adam at ``lr`` (default :data:`DEFAULT_LR`), or the given ``mlx.optimizers`` optimizer."""
    if optimizer is not None:
        if lr is not None:
            raise ValueError("give either lr= (for the default Adam) or optimizer=, not both")
        if not isinstance(optimizer, optim.Optimizer):
            raise TypeError(f"optimizer: expected an mlx.optimizers optimizer, got {type(optimizer).__name__}")
        return optimizer
    lr = DEFAULT_LR if lr is None else lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr: expected a positive learning rate, got {lr!r}")
    return optim.Adam(learning_rate=float(lr))
