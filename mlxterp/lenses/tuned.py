"""The tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the Tuned
Lens"): an affine translator per layer, ``h + h @ A_l + b_l``, trained so that the model's own final norm and
unembedding read each layer's residual output as close as possible (in KL) to the model's final prediction.

The translators start at the identity (``A_l = 0``, ``b_l = 0``): an untrained tuned lens *is* the logit lens.
The last layer's output needs no translator (through the readout it gives the model's logits), so by default
every layer but the last gets one, and the last is always read as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import mlx.core as mx

from ..store.files import write_json_atomic, write_safetensors_atomic
from .objective import translate

FORMAT = "mlxterp-tuned-lens"
VERSION = 1
CONFIG = "config.json"
PARAMS = "params.safetensors"
PathLike = Union[str, Path]


class TunedLens:
    """Per-layer affine translators of a model's residual stream (see the module docstring).

    Attributes:
        layers: the layers with a translator (their outputs, ``layers.N.resid_post``), ascending.
        n_layers: the model's number of layers (its last layer is read without a translator).
        d_model: the residual width.
        weight: ``(len(layers), d_model, d_model)`` float32, the ``A_l`` (applied as ``h @ A_l``).
        bias: ``(len(layers), d_model)`` float32, the ``b_l``.
        history: the training history (``{metric: list}``: ``loss``, ``kl`` and ``kl.<layer>`` per step, in
            nats per token), or None.
        info: what the lens was trained on (the model's class and fingerprint, the training settings).
    """

    def __init__(self, layers: Sequence[int], n_layers: int, d_model: int, weight: Optional[mx.array] = None,
                 bias: Optional[mx.array] = None, info: Optional[Dict[str, Any]] = None):
        self.layers = [int(x) for x in layers]
        self.n_layers, self.d_model = int(n_layers), int(d_model)
        n = len(self.layers)
        self.weight = mx.zeros((n, d_model, d_model)) if weight is None else weight
        self.bias = mx.zeros((n, d_model)) if bias is None else bias
        if tuple(self.weight.shape) != (n, d_model, d_model) or tuple(self.bias.shape) != (n, d_model):
            raise ValueError(f"a tuned lens of {n} layers at width {d_model} needs weight ({n}, {d_model}, {d_model}) "
                             f"and bias ({n}, {d_model}); got {tuple(self.weight.shape)} and {tuple(self.bias.shape)}")
        self.info = dict(info or {})
        self.history: Optional[Dict[str, List[float]]] = None
        self._row = {layer: i for i, layer in enumerate(self.layers)}

    # -- making one ----------------------------------------------------------------------------------
    @classmethod
    def create(cls, model: Any, layers: Optional[Sequence[int]] = None) -> "TunedLens":
        """An identity tuned lens for ``model`` (equal to the logit lens until trained).

        Args:
            model: the InterpretableModel.
            layers: layer indices to give a translator (negative ones count from the end); None: every layer
                but the last.

        Raises:
            ValueError: a layer out of range (the valid range is named).
        """
        from ..analysis.unembed import find_unembedding
        from ..analysis.validate import resolve_layers

        n = len(model.layers)
        chosen = list(range(n - 1)) if layers is None else sorted(set(resolve_layers(list(layers), n)))
        return cls(chosen, n, find_unembedding(model).hidden_size)

    @classmethod
    def train(cls, model: Any, data: Any, *, tokens: int, **options: Any) -> "TunedLens":
        """Train a tuned lens: see :func:`mlxterp.lenses.training.train_lens` for every option."""
        from .training import train_lens

        return train_lens(model, data, tokens=tokens, **options)

    # -- using it ------------------------------------------------------------------------------------
    def covers(self, layer: int) -> bool:
        """Whether the lens reads ``layer`` (a translated layer, or the last, read as it is)."""
        return layer in self._row or layer == self.n_layers - 1

    def translate(self, h: mx.array, layer: int) -> mx.array:
        """Layer ``layer``'s residual output ``h (..., d_model)`` translated, ``h + h @ A + b`` in ``h``'s dtype
        (the last layer's as it is).

        Raises:
            ValueError: the lens has no translator for ``layer`` (its layers are named).
        """
        if layer == self.n_layers - 1 and layer not in self._row:
            return h
        if layer not in self._row:
            raise ValueError(f"this tuned lens has no translator for layer {layer}; it was trained for layers "
                             f"{_span(self.layers)} (and reads the last layer, {self.n_layers - 1}, as it is)")
        i = self._row[layer]
        return translate(h, self.weight[i].astype(h.dtype), self.bias[i].astype(h.dtype))

    def logits(self, model: Any, h: mx.array, layer: int) -> mx.array:
        """The lens's logits ``(..., vocab)`` for layer ``layer``'s output ``h (..., d_model)``: the model's final
        norm and unembedding of the translated state, in the model's dtype."""
        from ..analysis.unembed import find_unembedding

        return find_unembedding(model).logits(self.translate(h, layer))

    def evaluate(self, model: Any, prompts: Any, **options: Any) -> Any:
        """Per-layer KL and cross-entropy on ``prompts``, beside the logit lens's: see
        :func:`mlxterp.lenses.evaluation.evaluate_lens`."""
        from .evaluation import evaluate_lens

        return evaluate_lens(model, self, prompts, **options)

    # -- files ---------------------------------------------------------------------------------------
    def save(self, path: PathLike) -> Path:
        """Write the folder ``path``: ``config.json`` (layers, widths, what it was trained on, the training
        history) and ``params.safetensors`` (``weight``, ``bias``). Returns the folder."""
        folder = Path(path).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        write_safetensors_atomic(folder / PARAMS, {"weight": self.weight, "bias": self.bias}, {"format": FORMAT})
        config = {"format": FORMAT, "version": VERSION, "layers": self.layers, "n_layers": self.n_layers,
                  "d_model": self.d_model, "info": self.info, "history": self.history}
        write_json_atomic(folder / CONFIG, config)
        return folder

    @classmethod
    def load(cls, path: PathLike) -> "TunedLens":
        """Read a folder written by :meth:`save`.

        Raises:
            FileNotFoundError: the folder or one of its files is missing.
            ValueError: it is not a tuned lens of this format, or its arrays do not match its config.
        """
        folder = Path(path).expanduser()
        for name in (CONFIG, PARAMS):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{str(folder)!r} is not a saved tuned lens: {name} is missing (expected the "
                                        "folder TunedLens.save wrote)")
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        if config.get("format") != FORMAT or config.get("version") != VERSION:
            raise ValueError(f"{str(folder / CONFIG)!r} is not a tuned lens of format {FORMAT!r} version {VERSION}")
        arrays = mx.load(str(folder / PARAMS))
        lens = cls(config["layers"], config["n_layers"], config["d_model"], arrays["weight"], arrays["bias"],
                   config.get("info"))
        lens.history = config.get("history")
        return lens

    def __repr__(self) -> str:
        trained = "identity" if self.history is None and not _nonzero(self.weight, self.bias) else "trained"
        return (f"TunedLens({len(self.layers)} layers {_span(self.layers)} of {self.n_layers}, d_model {self.d_model}, "
                f"{trained})")


def _nonzero(*arrays: mx.array) -> bool:
    return any(bool(mx.any(a != 0).item()) for a in arrays)


def _span(layers: List[int]) -> str:
    """``0-28`` for a contiguous run, else the list."""
    if layers and layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}-{layers[-1]}"
    return str(list(layers))

