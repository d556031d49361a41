"""One self-contained HTML page per view: styles, scripts and data inline, nothing fetched.

A view module builds a :class:`Page` (a title, header lines, the name of its script in ``static/``, and the
data that script draws); :func:`render` makes the page. Text reaches the page two ways, both safe for any
token (``<script>``, ``"``, ``&``): header lines are HTML-escaped here, and the data is JSON inside a
``<script type="application/json">`` element with ``<``, ``>`` and ``&`` written as ``\\u003c`` ...,
so no token can close the element; the scripts put text into the page only through ``textContent``.

Result classes get ``save_html(path)`` and Jupyter's ``_repr_html_`` from :class:`Viewable`.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

PathLike = Union[str, Path]
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


@dataclasses.dataclass
class Page:
    """What one view shows.

    Attributes:
        title: the page's title (plain text).
        header: ``(label, text)`` lines shown under the title (plain text).
        script: the view's script in ``mlxterp/views/static`` (``"attention"`` for ``attention.js``); it
            registers ``MX.views[script]``, a function of ``(root element, data)``.
        data: what the script draws (JSON values; non-finite floats become null).
        height: the height in pixels an inline (notebook) frame gives the page.
    """

    title: str
    header: List[Tuple[str, str]]
    script: str
    data: Dict[str, Any]
    height: int = 600


class Viewable:
    """Mixin: ``to_html``, ``save_html(path, **options)`` and ``_repr_html_()`` for a class that defines
    ``_page(**options) -> Page`` (usually one line calling its view module)."""

    def to_html(self, **options: Any) -> str:
        """The view as one self-contained HTML document (see ``save_html`` for the options)."""
        return render(self._page(**options))

    def save_html(self, path: PathLike, **options: Any) -> Path:
        """Write the interactive view to ``path``: one self-contained HTML file (no network needed).

        Returns:
            The path written.
        """
        target = Path(path).expanduser()
        if not target.parent.is_dir():
            raise ValueError(f"path: folder {str(target.parent)!r} of {str(path)!r} does not exist")
        target.write_text(self.to_html(**options), encoding="utf-8")
        return target

    def _repr_html_(self) -> str:
        """Jupyter's inline view: the page in a sandboxed frame (its scripts and styles stay inside)."""
        page = self._page()
        return inline_frame(render(page), page.height)


def render(page: Page) -> str:
    """The HTML document of ``page``."""
    header = "".join(f'<div class="meta"><span class="label">{_text(label)}</span> {_text(value)}</div>'
                     for label, value in page.header)
    data = dict(page.data, view=page.script)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_text(page.title)}</title>"
        f"<style>{asset('style.css')}</style></head>\n<body><header><h1>{_text(page.title)}</h1>{header}</header>"
        "<main id=\"view\"></main><div id=\"tip\" role=\"tooltip\" hidden></div>\n"
        f"<script type=\"application/json\" id=\"mlxterp-data\">{embed_json(data)}</script>\n"
        f"<script>{asset('common.js')}\n{asset(page.script + '.js')}\nMX.start();</script>\n</body></html>\n"
    )


def inline_frame(document: str, height: int) -> str:
    """``document`` in an ``<iframe srcdoc>`` (for notebooks: unique ids and styles per output)."""
    return (f'<iframe srcdoc="{html.escape(document, quote=True)}" sandbox="allow-scripts" '
            f'style="width:100%;height:{int(height)}px;border:1px solid #ddd" loading="lazy"></iframe>')


def embed_json(data: Any) -> str:
    """``data`` as JSON that is safe inside a ``<script>`` element (no ``</script>`` can appear)."""
    text = json.dumps(_finite(data), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escape in _JSON_ESCAPES.items():  # these appear only inside JSON strings, where \uXXXX is valid
        text = text.replace(char, escape)
    return text


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has no such numbers; the views show them as gaps)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)


@lru_cache(maxsize=None)
def asset(name: str) -> str:
    """The text of ``mlxterp/views/static/<name>``."""
    return resources.files("mlxterp.views").joinpath("static", name).read_text(encoding="utf-8")


def origin_lines(provenance: Dict[str, Any], prompt_names: Tuple[str, ...] = ("Prompt",)) -> List[Tuple[str, str]]:
    """Header lines saying which model made a result and on which prompts (none for a hand-made result).

    ``prompt_names`` labels the prompts in order (``("Clean", "Corrupted")``); further prompts are numbered.
    """
    lines: List[Tuple[str, str]] = []
    model = provenance.get("model") or {}
    if model.get("fingerprint"):
        lines.append(("Model", f"{model.get('class')}, {_count(model.get('parameters'))} parameters, fingerprint "
                               f"{model['fingerprint'][:12]} (mlxterp {provenance.get('mlxterp')})"))
    for i, prompt in enumerate(provenance.get("prompts") or []):
        name = prompt_names[i] if i < len(prompt_names) else f"Prompt {i + 1}"
        lines.append((name, json.dumps(prompt, ensure_ascii=False)))
    return lines


def _count(n: Any) -> str:
    if not isinstance(n, int):
        return "?"
    for unit, size in (("B", 10 ** 9), ("M", 10 ** 6), ("K", 10 ** 3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)
