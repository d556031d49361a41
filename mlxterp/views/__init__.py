"""Interactive HTML views of results, and results that save and load.

- :class:`Viewable` gives a result ``save_html(path)`` (one self-contained, offline HTML file),
  ``to_html()`` and Jupyter's ``_repr_html_``; one module per view (:mod:`.attention`, :mod:`.lens`,
  :mod:`.patching`, :mod:`.generation`, :mod:`.circuit`, :mod:`.dla`) builds a :class:`~.page.Page` drawn by
  its script in ``static/`` from the shared blocks of ``static/common.js``.
- :class:`Saveable` gives a result ``to_dict()``, ``save(path)`` and ``load(path)`` (JSON plus a
  safetensors side file, with the model's fingerprint, the prompts and the call's arguments);
  :func:`load_result` reads any saved result.

Adding a saveable result: derive from :class:`Saveable` (a dataclass needs only ``kind = "my_kind"``; other
classes override ``_record_fields`` / ``_from_record``) and end the function that makes it with
``return attach(result, model, prompts, arguments)`` (a result made from another result: ``derive(result,
parent, arguments)``). A saved record names its class's module, so
:func:`load_result` finds the kind without it being imported first.

Adding a view: a module ``views/<name>.py`` whose ``<name>_page(result, **options)`` returns
``Page(title, origin_lines(result.provenance) + [...], "<name>", data)``; a script ``static/<name>.js``
defining ``MX.views.<name> = function (root, data) {...}`` on the shared blocks (``MX.el`` and ``MX.svg``,
``MX.heatmap``, ``MX.tip``, ``MX.legend``, colour scales, ``MX.fmt`` and ``MX.sig``, ``MX.unpack`` for large
arrays packed by :mod:`.packing`; text only through ``textContent``); and on the result class, derive from :class:`Viewable` and define
``_page(self, **options)`` calling it. Test it in ``tests/views/test_browser.py`` (``open_view``).
"""

from .page import Page, Viewable
from .saving import ResultMismatchError, ResultMismatchWarning, Saveable, attach, derive, load_result

__all__ = ["Page", "ResultMismatchError", "ResultMismatchWarning", "Saveable", "Viewable", "attach", "derive",
           "load_result"]
