"""What TensorBoard shows a user, checked in a real TensorBoard rendered by headless Chromium
(scripts/tensorboard_screenshots.py; skipped, with the reason, where Chromium is not installed)."""

from __future__ import annotations

import re
import sys

import pytest

from helpers.cli import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import tensorboard_screenshots as view  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if view.chromium() is None:
        pytest.skip("needs Chromium (Debian's package chromium; CI installs it where it can)")
    work = tmp_path_factory.mktemp("tensorboard")
    runs = view.train_runs(work / "logs", work / "cache")
    with view.tensorboard(runs) as url:
        yield url, runs


def test_time_series_opens_on_train_and_val_and_runs_are_named_by_what_differs(served, tmp_path):
    url, runs = served
    groups = view.rendered_groups(url)
    assert groups[:3] == ["Pinned", "train", "val"], groups  # TensorBoard opens the first two groups
    assert set(groups) >= {"val_diagnostics", "val_summary"} and groups.index("val_diagnostics") > groups.index("val")
    names = sorted(p.name for p in runs.iterdir())
    assert [re.sub(r"_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d$", "", n) for n in names] == ["loss=dice_ce,debug=tiny,trainer.max_epochs=3_synthetic2d",
                                                                   "loss=tversky,debug=tiny,trainer.max_epochs=3_synthetic2d"]
    assert all(re.search(r"_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d$", n) for n in names)  # the time last
    shots = view.screenshots(url, tmp_path)
    assert all(path.stat().st_size > 20_000 for path in shots)  # pictures, not blank pages
