"""What a user sees in TensorBoard, as pictures: two short runs, a real TensorBoard, headless Chromium.

Trains two tiny runs (``debug=tiny``, ``loss=dice_ce`` and ``loss=tversky``), starts TensorBoard on
localhost, and saves screenshots of its Time Series and HParams tabs (docs/tensorboard_time_series.png,
docs/tensorboard_hparams.png). ``rendered_groups`` reads the rendered page's card groups in their order,
which ``tests/test_tensorboard_view.py`` checks: ``train`` and ``val`` first, so that TensorBoard opens on
the loss, Dice and IoU.

    python scripts/tensorboard_screenshots.py --out docs        # needs Debian's chromium (apt-get install chromium)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-unsafe-swiftshader"]


def chromium() -> str | None:
    return next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)


def train_runs(log_dir: Path, cache_dir: Path) -> Path:
    """Two tiny runs under ``log_dir``; returns the folder of runs (what ``tensorboard --logdir`` takes)."""
    env = {**os.environ, "SEGTRAIN_LOG_DIR": str(log_dir), "SEGTRAIN_CACHE_DIR": str(cache_dir)}
    for loss in ("dice_ce", "tversky"):
        subprocess.run([str(BIN / "segtrain"), "debug=tiny", "trainer.max_epochs=3", f"loss={loss}"], env=env, check=True,
                       capture_output=True, text=True)
    return log_dir / "train" / "runs"


@contextlib.contextmanager
def tensorboard(logdir: Path):
    """``tensorboard --logdir`` on a free localhost port; yields its address."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([str(BIN / "tensorboard"), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/data/runs", timeout=2).read()
                break
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def browse(url: str, *args: str, size: tuple[int, int] = (1400, 1100)) -> str:
    """Headless Chromium on ``url`` with ``args`` (``--screenshot=FILE`` or ``--dump-dom``); returns its stdout."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                               "--virtual-time-budget=15000", *args, url], capture_output=True, text=True, timeout=120)
    return proc.stdout


def rendered_groups(url: str) -> list[str]:
    """The Time Series tab's card groups, in the order TensorBoard shows them (``Pinned`` first)."""
    dom = browse(f"{url}/#timeseries", "--dump-dom")
    return re.findall(r'class="group-title"[^>]*>([^<]+)<', dom)


def screenshots(url: str, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    # forceSVG: TensorBoard draws its charts as SVG (its WebGL charts stay empty in a headless browser)
    shots = [(out / "tensorboard_time_series.png", "?forceSVG=true#timeseries"), (out / "tensorboard_hparams.png", "#hparams")]
    for path, tab in shots:
        browse(f"{url}/{tab}", f"--screenshot={path}")
    return [path for path, _ in shots]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    if chromium() is None:
        print("needs Chromium: apt-get install chromium", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as work:
        runs = train_runs(Path(work) / "logs", Path(work) / "cache")
        with tensorboard(runs) as url:
            print("groups:", ", ".join(rendered_groups(url)))
            for path in screenshots(url, args.out):
                print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
