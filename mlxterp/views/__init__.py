"""Interactive HTML views of results, and results that save and load.

- :class:`Viewable` gives a result ``save_html(path)`` (one self-contained, offline HTML file),
  ``to_html()`` and Jupyter's ``_repr_html_``; one module per view (:mod:`.attention`, :mod:`.lens`,
  :mod:`.patching`, :mod:`.generation`) builds a :class:`~.page.Page` drawn by its script in ``static/``
  from the shared blocks of ``static/common.js``.
- :class:`Saveable` gives a result ``to_dict()``, ``save(path)`` and ``load(path)`` (JSON plus a
  safetensors side file, with the model's fingerprint, the prompts and the call's arguments);
  :func:`load_result` reads any saved result.
"""

from .page import Page, Viewable
from .saving import ResultMismatchError, ResultMismatchWarning, Saveable, load_result

__all__ = ["Page", "ResultMismatchError", "ResultMismatchWarning", "Saveable", "Viewable", "load_result"]
