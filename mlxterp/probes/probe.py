"""A probe: a linear map of a site's activations to a label, ``z = x @ weight + bias``.

Kinds: ``linear`` (regression: ``probe(x)`` is the prediction), ``logistic`` (two classes: ``probe(x)`` is the
probability of ``classes[1]``) and ``softmax`` (several classes: ``probe(x)`` is their probabilities).
``probe(x)`` works on arrays and, inside a trace, on traced values (it is recorded with
:func:`mlxterp.apply`): ``probe(model.layers[12].resid_pre)``, or one number per generation step for the
generation view, ``probe(model.layers[12].output[:, -1]).save("probe")``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import mlx.core as mx

from ..store.files import write_json_atomic, write_safetensors_atomic
from ..tracing.proxy import apply
from .objective import KINDS, outputs

FORMAT = "mlxterp-probe"
VERSION = 1
CONFIG = "probe.json"
WEIGHTS = "probe.safetensors"


@dataclasses.dataclass
class ProbeScore:
    """How well a probe predicts labels on some rows.

    Attributes:
        kind: the probe's kind.
        rows: rows scored.
        loss: mean loss per row (squared error for ``linear``, negative log-likelihood otherwise; raw units).
        accuracy: fraction of rows classified right (classification), else None.
        r2: coefficient of determination, ``1 - SSE / SST`` over every target (``linear``), else None.
    """

    kind: str
    rows: int
    loss: float
    accuracy: Optional[float] = None
    r2: Optional[float] = None

    def __repr__(self) -> str:
        main = f"R^2 {self.r2:.4f}" if self.r2 is not None else f"accuracy {self.accuracy:.4f}"
        return f"ProbeScore({self.kind}: {main}, loss {self.loss:.4f} over {self.rows} rows)"


class Probe:
    """A trained (or given) linear probe (see the module docstring).

    Attributes:
        kind: ``"linear"``, ``"logistic"`` or ``"softmax"``.
        d_in, d_out: widths (``d_out`` is 1 for ``logistic``, the number of classes for ``softmax``).
        weight: ``(d_in, d_out)`` float32; bias: ``(d_out,)`` float32; they take raw activations.
        site: the site it reads (e.g. ``"layers.12.resid_pre"``), or None.
        classes: the label values of the classes (classification), in index order, or None.
        history: the training history, or None; heldout: the :class:`ProbeScore` on the held-out rows, or
            None.
    """

    def __init__(self, kind: str, d_in: int, d_out: int = 1, *, site: Optional[str] = None,
                 classes: Optional[List[Any]] = None, weight: Optional[mx.array] = None,
                 bias: Optional[mx.array] = None):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
        self.kind, self.d_in, self.d_out = kind, int(d_in), int(d_out)
        self.site, self.classes = site, None if classes is None else list(classes)
        self.weight = mx.zeros((d_in, d_out)) if weight is None else weight
        self.bias = mx.zeros((d_out,)) if bias is None else bias
        self.history: Optional[Dict[str, List[float]]] = None
        self.heldout: Optional[ProbeScore] = None

    @classmethod
    def train(cls, data: Any, labels: Any, **options: Any) -> "Probe":
        """Train a probe: see :func:`mlxterp.probes.training.train_probe` for every option."""
        from .training import train_probe

        return train_probe(data, labels, **options)

    # -- using it ------------------------------------------------------------------------------------
    def logits(self, x: mx.array) -> mx.array:
        """``x (..., d_in) @ weight + bias``, float32, ``(..., d_out)``."""
        return x.astype(mx.float32) @ self.weight + self.bias

    def forward(self, x: mx.array) -> mx.array:
        """The prediction (linear, ``(...)`` or ``(..., d_out)``), P(``classes[1]``) (logistic, ``(...)``, a
        fraction) or class probabilities (softmax, ``(..., d_out)``, fractions summing to 1) of arrays
        ``x (..., d_in)``, float32."""
        return outputs(self.kind, self.logits(x))

    def __call__(self, x: Any) -> Any:
        """:meth:`forward` of an array; inside a trace, of a traced value (recorded, as :func:`mlxterp.apply`)."""
        return apply(self.forward, x)

    def predict(self, x: Any) -> Any:
        """Integer class indices ``(...)`` into :attr:`classes` (classification) or float32 predictions (linear)
        of ``x (..., d_in)``; arrays or traced values."""
        if self.kind == "linear":
            return self(x)
        return apply(self._classify, x)

    def _classify(self, x: mx.array) -> mx.array:
        z = self.logits(x)
        return (z[..., 0] > 0).astype(mx.int32) if self.kind == "logistic" else mx.argmax(z, axis=-1)

    def score(self, data: Any, labels: Any, *, site: Optional[str] = None) -> ProbeScore:
        """The probe on ``data`` (a store, an array or ``{site: array}``, as for training) against ``labels``
        (per row, or per prompt of a store), as a :class:`ProbeScore` (accuracy as a fraction, or R^2)."""
        from .training import score_probe

        return score_probe(self, data, labels, site=site)

    # -- files ---------------------------------------------------------------------------------------
    def save(self, path: Union[str, Path]) -> Path:
        """Write the folder ``path``: ``probe.json`` (kind, widths, site, classes, history, held-out score) and
        ``probe.safetensors`` (``weight``, ``bias``). Returns the folder."""
        folder = Path(path).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        write_safetensors_atomic(folder / WEIGHTS, {"weight": self.weight, "bias": self.bias}, {"format": FORMAT})
        write_json_atomic(folder / CONFIG, {
            "format": FORMAT, "version": VERSION, "kind": self.kind, "d_in": self.d_in, "d_out": self.d_out,
            "site": self.site, "classes": self.classes, "history": self.history,
            "heldout": None if self.heldout is None else dataclasses.asdict(self.heldout)})
        return folder

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Probe":
        """Read a folder written by :meth:`save` (FileNotFoundError / ValueError when it is not one)."""
        folder = Path(path).expanduser()
        for name in (CONFIG, WEIGHTS):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{str(folder)!r} is not a saved probe: {name} is missing")
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        if config.get("format") != FORMAT or config.get("version") != VERSION:
            raise ValueError(f"{str(folder / CONFIG)!r} is not a probe of format {FORMAT!r} version {VERSION}")
        arrays = mx.load(str(folder / WEIGHTS))
        probe = cls(config["kind"], config["d_in"], config["d_out"], site=config.get("site"),
                    classes=config.get("classes"), weight=arrays["weight"], bias=arrays["bias"])
        probe.history = config.get("history")
        probe.heldout = None if config.get("heldout") is None else ProbeScore(**config["heldout"])
        return probe

    def __repr__(self) -> str:
        where = f" at {self.site}" if self.site else ""
        classes = f", classes {self.classes}" if self.classes is not None else ""
        score = f", held out: {self.heldout!r}" if self.heldout is not None else ""
        return f"Probe({self.kind}{where}, {self.d_in} -> {self.d_out}{classes}{score})"
