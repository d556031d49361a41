"""Tools that build the documentation site (not installed; run from the repository root).

- :mod:`docsgen.public`: the public API, one definition for every check below.
- :mod:`docsgen.docstrings`: every public name has a docstring (``python -m docsgen.docstrings``).
- :mod:`docsgen.roles`: what a Sphinx role in a docstring names (the links of the API reference).
- :mod:`docsgen.tutorials`: run the tutorials (``python -m docsgen.tutorials``) and render them as pages.
- :mod:`docsgen.hooks`: the MkDocs hooks (``mkdocs.yml``) that tie them into ``mkdocs build --strict``.
"""
