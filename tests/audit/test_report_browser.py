"""The HTML report opens in headless Chromium with no console errors, and its images are visible."""

from __future__ import annotations

import subprocess

import numpy as np

from tests.programs import require


def _screenshot(html, png, profile, size=(1200, 2600)):
    cmd = [
        require("chromium", "chromium"),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--hide-scrollbars",
        f"--screenshot={png}",
        f"--window-size={size[0]},{size[1]}",
        html.as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def test_html_report_renders_in_headless_chromium(passing_run, tmp_path):
    import matplotlib.pyplot as plt

    html = passing_run["out"] / "report.html"
    text = html.read_text()
    assert "<script" not in text and "http://" not in text.split("<pre>")[0]  # self-contained
    assert text.count('src="data:image/png;base64,') >= 3  # sweep chart, reconstruction grid, ROC
    png = tmp_path / "report.png"
    r = _screenshot(html, png, tmp_path / "profile")
    assert r.returncode == 0, r.stderr[-2000:]
    console = [ln for ln in r.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert console == [], console
    img = plt.imread(png)[..., :3]
    assert img.shape[0] == 2600 and img.shape[1] == 1200
    # the page is not blank: many distinct colours, and the figures' own colours are on it
    flat = (img * 255).astype(np.uint8).reshape(-1, 3)
    assert np.unique(flat, axis=0).shape[0] > 200
    assert img.std() > 0.05

    def near(rgb, tol=40):
        return int((np.abs(flat.astype(int) - np.asarray(rgb)).sum(1) < tol).sum())

    assert near((0xE8, 0xF6, 0xEC), 6) > 20_000  # the green PASS verdict banner at the top
    assert near((0xC0, 0x39, 0x2B)) > 300  # red: attack curve in the sweep chart and the ROC curve
    grey = (np.abs(flat[:, 0].astype(int) - flat[:, 2]) < 4) & (flat[:, 0] < 200) & (flat[:, 0] > 30)
    assert grey.sum() > 5_000  # the grey-scale reconstruction grid
