"""
Real headless Chromium for the web admin's tests: Debian's `chromium`
driven by Playwright (which cannot download its own browsers here), in a
thread of its own while the reactor serves the pages in the test's process.
Each test's steps click and type like a person and save screenshots to
MEDIMAGE_SCREENSHOTS or the test's temporary folder (the README's, in
docs/screenshots, are taken by tools/screenshots.py from a realistic
install, not from tests' temporary paths).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

#: None when not installed: the tests that need it skip (the `chromium` fixture).
CHROMIUM = shutil.which("chromium")
#: The longest one browser action (a click, a page load) may take.
ACTION_MS = 15_000
#: The longest a whole browser session of a test may take.
SESSION_SECONDS = 120.0


def screenshot_dir(tmp_path: Path) -> Path:
    chosen = os.environ.get("MEDIMAGE_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_browser(steps: Callable[[Any], Any], *chromium_args: str) -> Any:
    """
    Run C{steps(page)} in a fresh headless Chromium (blocking: call it in a
    thread).  Root needs --no-sandbox.
    """
    from playwright.sync_api import sync_playwright

    if CHROMIUM is None:
        raise AssertionError("chromium is not installed: use the chromium fixture (tests/conftest.py)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", *chromium_args])
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 900})
            page = context.new_page()
            page.set_default_timeout(ACTION_MS)
            return steps(page)
        finally:
            browser.close()


def in_browser(steps: Callable[[Any], Any], *chromium_args: str):
    """
    A Deferred for L{run_browser} in a thread, bounded by L{SESSION_SECONDS}.
    """
    from twisted.internet import reactor, threads

    d = threads.deferToThread(run_browser, steps, *chromium_args)
    return d.addTimeout(SESSION_SECONDS, reactor)
