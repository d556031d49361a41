"""Open views in headless Chromium (the tests and the views benchmark use it; so can a harness checking its
own saved views): Debian's ``chromium`` driven by Playwright, with no network.

Playwright (``pip install playwright``, in the dev extra) drives the system's Chromium
(``apt-get install -y chromium``, ``/usr/bin/chromium``); Playwright's own browser download is not needed.
Chromium starts headless in a fresh temporary profile (Playwright's ``launch`` makes one per browser) with
its background services off: with them on, its connections on a closed network are refused and logged.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, List, Optional

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> Optional[str]:
    """The Chromium executable (``$MLXTERP_CHROMIUM``, ``/usr/bin/chromium``, or ``chromium`` on the PATH)."""
    for candidate in (os.environ.get("MLXTERP_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def unavailable() -> Optional[str]:
    """Why views cannot be opened in a browser here, or None."""
    if chromium_path() is None:
        return "Chromium is absent (apt-get install -y chromium; or set MLXTERP_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright, or the dev extra: pip install -e '.[dev]')"
    return None


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (a Playwright ``Browser``), closed on exit.

    Raises:
        RuntimeError: Chromium or Playwright is missing (the message says how to install it).
    """
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


class OpenedView:
    """A view opened in a new tab: the Playwright ``page``, and what happened while it loaded.

    Attributes:
        page: the Playwright Page.
        errors: console errors and uncaught exceptions, as text.
        requests: URLs requested besides the view's own file.
    """

    def __init__(self, browser: Any, path: Path, viewport: Optional[dict] = None):
        self.url = Path(path).resolve().as_uri()
        self.page = browser.new_page(viewport=viewport or {"width": 1280, "height": 900})
        self.errors: List[str] = []
        self.requests: List[str] = []
        self.page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("request", lambda req: self.requests.append(req.url) if req.url != self.url else None)
        self.page.goto(self.url)
        self.page.wait_for_function("window.MX_READY !== undefined")

    @property
    def ready_ms(self) -> float:
        """Milliseconds from the start of navigation until the view had drawn itself."""
        return float(self.page.evaluate("window.MX_READY"))

    def close(self) -> None:
        self.page.close()
