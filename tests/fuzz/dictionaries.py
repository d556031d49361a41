"""The dictionaries the fuzzer splices, and their splicing written by hand for the reference forward.

In every layer ``i``: an SAE at ``layers.i.resid_pre`` (the layer's input; program sites ``sae_f``, ``sae_e``,
``sae_r``: its features, error, reconstruction) and a transcoder from ``layers.i.mlp.input`` to
``layers.i.mlp`` (sites ``tc_f``, ``tc_e``, ``tc_r``). ReLU dictionaries: a TopK or JumpReLU selection is
discontinuous, and the library's and the reference's float rounding may fall on two sides of it.

:class:`HandSplices` is the reference's side: the rules of the README written on arrays. At a spliced site,
after the ``interventions=`` entries there, the parts are computed from the site's value (a transcoder's
features from its input site's), the site becomes ``reconstruction + error``, the site's own statements run,
then the parts' statements: a write of the features decodes a new reconstruction, and every part write makes
the site ``reconstruction + error`` of the current parts (the site keeps its last write).
"""

from __future__ import annotations

from typing import Any, Optional

import mlx.core as mx

from tests.features.helpers import dictionary, hand_decode, hand_encode

from .programs import D_SAE, DICT_KINDS, HIDDEN, LAYERS, SAE_PARTS, TC_PARTS

PART_NAMES = {"f": "features", "e": "error", "r": "reconstruction"}
OWNER_SITE = {"sae": "layer_in", "tc": "mlp"}  # the program site whose value each dictionary replaces


class FuzzDictionaries:
    """One SAE and one transcoder per layer (see the module docstring), with random weights from ``seed``."""

    def __init__(self, seed: int = 0):
        self.sae = [dictionary("relu", f"layers.{i}.resid_pre", HIDDEN, D_SAE, seed=seed + 2 * i)
                    for i in range(LAYERS)]
        self.tc = [dictionary("relu", f"layers.{i}.mlp.input", HIDDEN, D_SAE, seed=seed + 2 * i + 1,
                              site_out=f"layers.{i}.mlp", scales=(1.1, 0.9)) for i in range(LAYERS)]

    def all(self) -> list:
        """What ``dictionaries=`` is given."""
        return self.sae + self.tc

    def get(self, which: str, layer: int) -> Any:
        return (self.sae if which == "sae" else self.tc)[layer]


def part_of(site: tuple) -> tuple[str, str]:
    """``("sae_f", 1)`` -> ``("sae", "features")``."""
    which, letter = site[0].split("_")
    return which, PART_NAMES[letter]


def library_part(model: Any, site: tuple) -> tuple[Any, str]:
    """The spliced dictionary's handle (``h.sae``) and the part's attribute, for ``getattr``/``setattr``."""
    which, part = part_of(site)
    layer = model.layers[site[1]]
    handle = layer.input.sae if which == "sae" else layer.mlp.output.transcoder
    return handle, part


class HandSplices:
    """The reference's splices: parts per dictionary, and the site values they make (see the module
    docstring). ``current`` is the reference run's dict of site values (the parts are kept there too)."""

    def __init__(self, dictionaries: FuzzDictionaries, current: dict):
        self.d, self.current = dictionaries, current

    def owner(self, site: tuple) -> Optional[str]:
        """The dictionary whose value ``site`` is (``"sae"``/``"tc"``), or None."""
        return next((w for w, s in OWNER_SITE.items() if site[0] == s), None) if len(site) == 2 else None

    def see(self, site: tuple, value: mx.array) -> None:
        """Keep the transcoder's input (the MLP's input, ``("mlp_in", i)``) when the forward passes it."""
        if site[0] == "mlp_in":
            self.current[site] = value

    def splice(self, site: tuple) -> None:
        """Compute the parts at an owner site (after its interventions) and make the site their sum."""
        which, layer = self.owner(site), site[1]
        d, x = self.d.get(which, layer), self.current[site]
        f = hand_encode(d, x if which == "sae" else self.current[("mlp_in", layer)])
        r = hand_decode(d, f)
        parts = dict(zip((which + "_f", which + "_r", which + "_e"), (f, r, x.astype(mx.float32) - r)))
        self.current.update({(k, layer): v for k, v in parts.items()})
        self._write_site(which, layer)

    def set_part(self, site: tuple, value: Any) -> None:
        which, part = part_of(site)
        layer = site[1]
        old = self.current[site]
        if isinstance(value, float):
            value = mx.full(old.shape, value, dtype=old.dtype)
        self.current[site] = mx.broadcast_to(value.astype(old.dtype), old.shape)
        if part == "features":
            self.current[(which + "_r", layer)] = hand_decode(self.d.get(which, layer), self.current[site])
        self._write_site(which, layer)

    def _write_site(self, which: str, layer: int) -> None:
        owner = (OWNER_SITE[which], layer)
        total = self.current[(which + "_r", layer)] + self.current[(which + "_e", layer)]
        self.current[owner] = total.astype(self.current[owner].dtype)


def parts_of(which: str) -> tuple:
    return SAE_PARTS if which == "sae" else TC_PARTS


__all__ = ["DICT_KINDS", "FuzzDictionaries", "HandSplices", "library_part", "part_of"]
