"""A dictionary's training objective: the losses of each architecture, written from their papers.

Inputs ``x`` and targets ``y`` are scaled by the normalization constants first (``y = x`` for an SAE);
``B`` is the global batch size and every sum below runs over the whole global batch (each rank adds its
rows: see :mod:`.learner`).

- Reconstruction, ``relu`` and ``jumprelu``: ``sum ||y - y_hat||^2 / B`` (SAELens's convention, to which
  their coefficients are scaled). ``topk`` and ``batchtopk``: the normalized MSE of Gao et al. (2024),
  ``sum ||y - y_hat||^2 / sum ||y - mean(y)||^2``.
- ``relu``: ``+ l1 * c_t * sum_rows sum_i f_i ||W_dec[i]|| / B`` (decoder-norm-weighted L1).
- ``jumprelu``: ``+ l0 * c_t * sum_rows sum_i H(pre_i - theta_i) / B``, through the straight-through
  step of :func:`.architectures.step`; ``theta = exp(log_theta)`` is trained.
- ``topk``/``batchtopk``, once some latent is dead (no activation in the last ``dead_tokens`` tokens):
  AuxK, ``+ aux_coefficient * sum ||e - e_hat||^2 / sum ||e - mean(e)||^2`` with ``e = y - y_hat``
  (no gradient) and ``e_hat = auxk_acts(pre) @ W_dec`` (Gao et al. 2024, Appendix A.2).

``c_t`` ramps the sparsity coefficient up over the first ``sparsity_warmup`` fraction of the steps. The
state carries, per latent, the tokens since it last fired and how often it fired, and ``batchtopk``'s
inference threshold: a running average (rate ``threshold_lr``) of the smallest activation each batch
selected, as SAELens keeps it.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import mlx.core as mx

from . import architectures as archs
from .dictionary import Dictionary
from .learner import Comm, Objective
from .optim import Tree, ramp

SINCE_CAP = 1 << 30  # tokens-since-fired counters stop here (int32)


class DictionaryObjective(Objective):
    """Trains one :class:`~mlxterp.dictionaries.Dictionary` whose widths are known.

    Args:
        dictionary: the dictionary (its weights are the starting point).
        key_in: the batch entry of its input (a site key).
        key_out: the batch entry of its target (``key_in`` for an SAE).
        batch_size: the global batch size ``B``.
    """

    def __init__(self, dictionary: Dictionary, key_in: str, key_out: str, batch_size: int):
        self.dictionary = dictionary
        self.config = c = dictionary.config
        self.arch = archs.architecture(c.architecture)
        self.key_in, self.key_out = key_in, key_out
        self.keys = (key_in,) if key_in == key_out else (key_in, key_out)
        self.batch = int(batch_size)
        self.name = dictionary.label
        self.k_batch = max(1, round(c.k * self.batch)) if c.architecture == "batchtopk" else 0

    # -- arrays ------------------------------------------------------------------------------------
    def init_params(self) -> Tree:
        """The dictionary's ``W_enc (d_in, d_sae)``, ``b_enc (d_sae,)``, ``W_dec (d_sae, d_out)``,
        ``b_dec (d_out,)``, and for ``jumprelu`` ``log_threshold (d_sae,)`` (the log of its thresholds)."""
        d = self.dictionary
        params = {n: d[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
        if self.arch.name == "jumprelu":
            params["log_threshold"] = mx.log(mx.maximum(d.threshold, 0))
        return params

    def init_state(self) -> Tree:
        """``since_fired`` ``(d_sae,)`` int32 (training tokens since each latent last fired, capped at 2**30),
        ``fires`` ``(d_sae,)`` (how many tokens each latent fired on), the scalars ``input_scale`` and
        ``output_scale`` (float32), and for ``batchtopk`` the scalar ``threshold`` (float32, its running
        average)."""
        d, c = self.dictionary, self.config
        state = {"since_fired": mx.zeros((c.d_sae,), dtype=mx.int32), "fires": mx.zeros((c.d_sae,)),
                 "input_scale": d.input_scale.astype(mx.float32), "output_scale": d.output_scale.astype(mx.float32)}
        if self.arch.name == "batchtopk":
            state["threshold"] = d.threshold[0].astype(mx.float32)
        return state

    def prepare(self, batch: Dict[str, mx.array], comm: Comm) -> None:
        """For freshly initialized weights: the normalization constants (mean norm ``sqrt(width)``) and
        ``b_dec`` at the mean target, from the first global batch."""
        d, c = self.dictionary, self.config
        if not d.fresh:
            return
        x, y = batch[self.key_in].astype(mx.float32), batch[self.key_out].astype(mx.float32)
        if c.normalize == "expected_average":
            d.input_scale = _scale(x, comm, self.batch)
            d.output_scale = d.input_scale if c.kind == "sae" else _scale(y, comm, self.batch)
        if c.b_dec_init == "mean":
            d.b_dec = (comm.sum((y * d.output_scale).sum(axis=0)) / self.batch).astype(d.b_dec.dtype)
        mx.eval(d.parameters())
        d.fresh = False

    def hyper(self, step: int, total: int) -> Dict[str, float]:
        """``{"coef": c_t}``: the sparsity coefficient's warm-up factor, a linear ramp to 1 over the first
        ``sparsity_warmup`` fraction of the ``total`` steps (1 throughout without warm-up)."""
        return {"coef": ramp(step, round(self.config.sparsity_warmup * total))}

    def variant(self, state: Tree) -> Any:
        """While some latent is dead (TopK/BatchTopK add AuxK then): how many latents the AuxK term works on,
        the dead ones rounded up to a power of two (at least ``aux_k``; one compiled step per size), or all
        of them once that is over a quarter (gathering so many columns costs more than it saves); else
        ``None``."""
        if not self.arch.dead_latents:
            return None
        dead = int(mx.sum(state["since_fired"] >= self.config.dead_tokens).item())
        if dead == 0:
            return None
        size = max(self.config.effective_aux_k, 1 << (dead - 1).bit_length())
        return size if 4 * size <= self.config.d_sae else self.config.d_sae

    # -- the loss ----------------------------------------------------------------------------------
    def loss(self, params: Tree, state: Tree, batch: Dict[str, mx.array], hyper: Dict[str, mx.array],
             comm: Comm, variant: Any) -> Tuple[mx.array, Dict[str, mx.array]]:
        """The architecture's loss (see the module docstring) on this rank's rows (a scalar), and
        ``aux``: the squared error ``sq``, the target's total ``variance`` (global), each latent's firing
        count ``fires`` ``(d_sae,)``, whether the batch was ``finite``, the ``sparsity`` and (while some
        latent is dead) ``auxk`` terms, and for ``batchtopk`` ``min_selected`` (this rank's smallest selected
        activation).

        Args:
            params: :meth:`~DictionaryObjective.init_params`'s arrays.
            state: :meth:`~DictionaryObjective.init_state`'s arrays.
            batch: this rank's rows, ``{key: (rows, width)}``.
            hyper: ``lr``, ``t`` and ``coef`` (:meth:`~DictionaryObjective.hyper`).
            comm: the ranks' collectives.
            variant: :meth:`~DictionaryObjective.variant`'s AuxK size, or None (no AuxK term).
        """
        c, B = self.config, self.batch
        x = batch[self.key_in].astype(mx.float32) * state["input_scale"]
        y = x if self.key_out == self.key_in else batch[self.key_out].astype(mx.float32) * state["output_scale"]
        pre = _pre_activations(x, params, c.apply_b_dec_to_input)
        acts, smallest = self._activations(pre, params, comm)
        recon = acts @ params["W_dec"] + params["b_dec"]
        sq = mx.square(recon - y).sum()
        variance = _total_variance(y, comm, B)
        aux = {"sq": mx.stop_gradient(sq), "variance": variance, "fires": (acts > 0).sum(axis=0).astype(mx.float32),
               "finite": mx.isfinite(x).all() & mx.isfinite(y).all()}
        if self.arch.dead_latents:
            loss = sq / variance
        else:
            loss = sq / B
        sparsity = self._sparsity(pre, acts, params, hyper)
        aux["sparsity"] = mx.stop_gradient(sparsity)
        loss = loss + sparsity
        if variant is not None:
            auxk = self._auxk(pre, y - mx.stop_gradient(recon), params, state, comm, variant)
            aux["auxk"] = mx.stop_gradient(auxk)
            loss = loss + auxk
        if smallest is not None:
            aux["min_selected"] = smallest
        return loss, aux

    def _activations(self, pre: mx.array, params: Tree, comm: Comm) -> Tuple[mx.array, Any]:
        """The training activations, and for ``batchtopk`` the smallest value it selected on this rank."""
        name, c = self.arch.name, self.config
        if name == "topk":
            return archs.topk_train(pre, int(c.k)), None
        if name == "batchtopk":
            return archs.batchtopk_train(pre, self.k_batch, comm.gather if comm.distributed else None)
        if name == "jumprelu":
            return archs.jumprelu(pre, mx.exp(params["log_threshold"]), mx.array(c.bandwidth)), None
        return archs.relu(pre), None

    def _sparsity(self, pre: mx.array, acts: mx.array, params: Tree, hyper: Dict[str, mx.array]) -> mx.array:
        name, c = self.arch.name, self.config
        if name == "relu":
            norms = mx.linalg.norm(params["W_dec"], axis=-1)
            return c.l1_coefficient * hyper["coef"] * (acts * norms).sum() / self.batch
        if name == "jumprelu":
            l0 = archs.step(pre, mx.exp(params["log_threshold"]), mx.array(c.bandwidth)).sum()
            return c.l0_coefficient * hyper["coef"] * l0 / self.batch
        return mx.array(0.0)

    def _auxk(self, pre: mx.array, error: mx.array, params: Tree, state: Tree, comm: Comm, size: int) -> mx.array:
        """AuxK (Gao et al. 2024): the dead latents' reconstruction of the error, normalized MSE. It works on
        ``size`` latents, every dead one among them (dead first): with few dead latents, a
        ``batch x size x d_in`` decoder pass instead of one over every latent."""
        c = self.config
        e = mx.stop_gradient(error)
        dead = state["since_fired"] >= c.dead_tokens
        w_dec = params["W_dec"]
        if size < c.d_sae:
            chosen = mx.argsort(mx.where(dead, 0, 1))[:size]
            pre, dead, w_dec = mx.take(pre, chosen, axis=1), mx.take(dead, chosen), mx.take(w_dec, chosen, axis=0)
        e_hat = archs.auxk_acts(pre, dead, c.effective_aux_k) @ w_dec
        return c.aux_coefficient * mx.square(e_hat - e).sum() / _total_variance(e, comm, self.batch)

    # -- around the update -------------------------------------------------------------------------
    def project(self, params: Tree, grads: Tree) -> Tree:
        """Unit-norm decoders: remove each row's gradient component along the row (Gao et al.)."""
        if not self.arch.unit_norm:
            return grads
        w, g = params["W_dec"], grads["W_dec"]
        return {**grads, "W_dec": g - (w * g).sum(axis=-1, keepdims=True) * w}

    def constrain(self, params: Tree) -> Tree:
        """Unit-norm decoders (``topk``, ``batchtopk``, ``jumprelu``): each row of ``W_dec`` divided by its
        norm after the update; ``relu``'s decoder is left free."""
        if not self.arch.unit_norm:
            return params
        w = params["W_dec"]
        return {**params, "W_dec": w / mx.linalg.norm(w, axis=-1, keepdims=True)}

    def update_state(self, params: Tree, state: Tree, aux: Dict[str, mx.array], comm: Comm) -> Tree:
        """The firing counters after this batch (every rank's fires summed: a latent that fired resets to 0,
        the others age by ``B`` tokens), and ``batchtopk``'s threshold moved towards the batch's smallest
        selected activation (the minimum over the ranks) at rate ``threshold_lr`` (kept when it selected none)."""
        fires = comm.sum(aux["fires"])
        since = mx.where(fires > 0, 0, mx.minimum(state["since_fired"] + self.batch, SINCE_CAP)).astype(mx.int32)
        new = {**state, "since_fired": since, "fires": state["fires"] + fires}
        if self.arch.name == "batchtopk":
            smallest = comm.min(aux["min_selected"])
            rate = self.config.threshold_lr
            new["threshold"] = mx.where(mx.isfinite(smallest), (1 - rate) * state["threshold"] + rate * smallest,
                                        state["threshold"])
        return new

    def metrics(self, params: Tree, state: Tree, aux: Dict[str, mx.array], comm: Comm) -> Dict[str, mx.array]:
        """Scalars over the global batch: ``mse`` (squared error per row, normalized space), ``fve`` (fraction
        of variance explained), ``l0`` (active latents per row), ``dead`` (fraction of latents silent for
        ``dead_tokens`` tokens), the ``sparsity`` and ``auxk`` loss terms, and ``finite`` (1.0 when every
        rank's batch was finite)."""
        sq = comm.sum(aux["sq"])
        out = {"mse": sq / self.batch, "fve": 1 - sq / aux["variance"],
               "l0": comm.sum(aux["fires"].sum()) / self.batch,
               "dead": (state["since_fired"] >= self.config.dead_tokens).astype(mx.float32).mean(),
               "sparsity": comm.sum(aux["sparsity"]),
               "auxk": comm.sum(aux["auxk"]) if "auxk" in aux else mx.array(0.0),
               "finite": comm.min(aux["finite"].astype(mx.float32))}
        return out

    def write_back(self, params: Tree, state: Tree) -> None:
        """Set the dictionary's weights from the trained arrays: ``threshold`` from ``exp(log_threshold)``
        (``jumprelu``) or the running threshold for every latent (``batchtopk``), and the normalization
        constants."""
        d = self.dictionary
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            setattr(d, name, params[name])
        if self.arch.name == "jumprelu":
            d.threshold = mx.exp(params["log_threshold"])
        elif self.arch.name == "batchtopk":
            d.threshold = mx.full((self.config.d_sae,), state["threshold"])
        d.input_scale, d.output_scale = state["input_scale"], state["output_scale"]
        d.fresh = False


def _pre_activations(x: mx.array, params: Tree, apply_b_dec: bool) -> mx.array:
    """``(x - b_dec) @ W_enc + b_enc`` written as ``x @ W_enc + (b_enc - b_dec @ W_enc)``: the same values, but
    ``b_dec``'s gradient through the encoder is then a vector-matrix product, not a ``(batch, d_sae) @
    (d_sae, d_in)`` matmul (a fifth more than the step's five dense matmuls), and the bias add is the matmul's."""
    bias = params["b_enc"] - params["b_dec"] @ params["W_enc"] if apply_b_dec else params["b_enc"]
    return mx.addmm(bias, x, params["W_enc"])


def _scale(values: mx.array, comm: Comm, batch: int) -> mx.array:
    """The constant that makes the rows' mean norm ``sqrt(width)`` over the global batch."""
    mean_norm = comm.sum(mx.linalg.norm(values, axis=-1).sum()) / batch
    return (math.sqrt(values.shape[-1]) / mx.maximum(mean_norm, 1e-12)).astype(mx.float32)


def _total_variance(y: mx.array, comm: Comm, batch: int) -> mx.array:
    """``sum ||y - mean(y)||^2`` over the global batch (a constant: no gradient)."""
    y = mx.stop_gradient(y)
    mean = comm.sum(y.sum(axis=0)) / batch
    return mx.maximum(comm.sum(mx.square(y - mean).sum()), 1e-12)
