"""Open the built documentation in headless Chromium and check what it renders.

Not run by CI: CI has no Chromium. Run it by hand after changing the docs (Debian:
``apt-get install -y chromium``), from the repository root::

    python docs/scripts/check_site.py                 # build, serve, load, check, screenshot
    python docs/scripts/check_site.py --no-build      # check an existing site/ folder

It builds the site with ``mkdocs build --strict`` into a temporary folder, serves it on
127.0.0.1 with ``python -m http.server`` in a subprocess, and loads the Home page and an API page
with ``chromium --headless --dump-dom``. The rendered DOM of each must contain the expected text,
every image it shows must be served, and no page of the site may load a script, stylesheet,
font or image from the internet. It also writes a screenshot of each page (1280x900) to
``--shots`` (default: a temporary folder) for a person to look at; screenshots are not committed.

Exit status 0 when every check passes; the failures are printed otherwise.
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: page path -> text the rendered page must contain (after scripts ran, tags stripped)
PAGES: dict[str, list[str]] = {
    "": [
        "Fractal generative models in PyTorch",
        "Ten lines",
        "exact",
        "bits_per_dim",
        "Concepts",
    ],
    "api/fractal/": [
        "fractalkit.fractal",
        "Fractal",
        "log_prob",
        "Per-instance log-likelihood in nats, with its kind.",
        "num_draws",
        "TrainingLoss",
    ],
}

REMOTE = re.compile(
    r"""(?:<script[^>]+src|<link[^>]+href|<img[^>]+src|<iframe[^>]+src)=["']https?://"""
    r"""|url\(["']?https?://|@import\s+["']https?://"""
)


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("check_site: no Chromium found (Debian: apt-get install -y chromium)")


def chromium(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    profile = tempfile.mkdtemp(prefix="fractalkit-chromium-")
    try:
        return subprocess.run(
            [
                chromium_binary(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=5000",  # let the site's own scripts run before the dump
                *extra,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_served(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def offline_problems(site: Path) -> list[str]:
    problems = []
    for path in site.rglob("*"):
        if path.suffix in {".html", ".css"}:
            text = path.read_text(encoding="utf-8", errors="replace")
            problems += [
                f"{path.relative_to(site)} loads {m.group(0)!r}" for m in REMOTE.finditer(text)
            ]
    return problems


def check(site: Path, shots: Path) -> list[str]:
    failures = offline_problems(site)
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(site),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/"
        wait_until_served(base)
        for page, expected in PAGES.items():
            url = base + page
            result = chromium(url, "--dump-dom")
            if result.returncode != 0 or "<body" not in result.stdout:
                failures.append(
                    f"{url}: chromium failed ({result.returncode}): {result.stderr[-500:]}"
                )
                continue
            text = visible_text(result.stdout)
            failures += [
                f"{url}: rendered text lacks {want!r}" for want in expected if want not in text
            ]
            for src in re.findall(r"<img[^>]+src=\"([^\"]+)\"", result.stdout):
                target = urllib.parse.urljoin(url, html.unescape(src))
                try:
                    with urllib.request.urlopen(target, timeout=5) as response:
                        if response.status != 200:
                            failures.append(f"{url}: image {src} answered {response.status}")
                except OSError as err:
                    failures.append(f"{url}: image {src} not served: {err}")
            shot = shots / f"{page.strip('/').replace('/', '-') or 'home'}.png"
            chromium(url, f"--screenshot={shot}", "--window-size=1280,900", "--hide-scrollbars")
            if shot.is_file():
                print(f"screenshot: {shot}")
            else:
                failures.append(f"{url}: no screenshot written")
            print(f"checked {url}: {len(text)} characters of text")
    finally:
        server.terminate()
        server.wait(timeout=10)
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-build", action="store_true", help="use the existing --site folder")
    parser.add_argument(
        "--site", type=Path, default=None, help="site folder (default: a fresh build)"
    )
    parser.add_argument("--shots", type=Path, default=None, help="folder for the screenshots")
    args = parser.parse_args()
    shots = args.shots or Path(tempfile.mkdtemp(prefix="fractalkit-shots-"))
    shots.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fractalkit-site-") as tmp:
        site = args.site or (ROOT / "site" if args.no_build else Path(tmp) / "site")
        if not args.no_build:
            build = subprocess.run(
                [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            if build.returncode != 0:
                print(build.stderr[-4000:], file=sys.stderr)
                return 1
        failures = check(site, shots)
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print("site check:", "passed" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
