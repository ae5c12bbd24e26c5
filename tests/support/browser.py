"""A page as a real browser shows it: Debian's headless Chromium, in a network namespace with no
network at all (`unshare -n`), returns the DOM after the page's scripts ran."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--virtual-time-budget=5000"]


class Elements(HTMLParser):
    """Every start tag as (tag, attributes), and the text inside each element with an id."""

    def __init__(self):
        super().__init__()
        self.elements: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))


def rendered_dom(page: Path) -> str:
    """The page's DOM after load, from Chromium with no network (`make test` installs Chromium)."""
    assert Path(CHROMIUM).exists(), "Chromium is needed for the page tests: `apt-get install chromium` (make test does it)"
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(["unshare", "-n", CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.resolve().as_uri()],
                              capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


def elements(dom: str) -> list[tuple[str, dict]]:
    parser = Elements()
    parser.feed(dom)
    return parser.elements
