"""report.html in headless Chromium: the page's script runs without an error, every section is
there, the image viewer initialises, and its slider, synchronized zoom and pagination respond.

Skipped where no Chromium is installed (/usr/bin/chromium or `chromium` on PATH). The run is the
fake run directory of tests/test_report.py (parts written directly, no Ray), whose suite name and
captions are hostile HTML.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pid_bench import report
from tests.test_report import HOSTILE_CAPTION, HOSTILE_SUITE, IMAGES, SIGMAS, SIZES, _write_run

SECTIONS = (
    "recommendations",
    "provenance",
    "leaderboard",
    "definitions",
    "plots",
    "viewer",
    "failures",
)
#: Appended to a copy of the page, after its own scripts: drives the viewer as a reader would
#: (hover a tile, press on the slider, go to the next page) and writes what it saw into
#: <html data-probe>, which --dump-dom then shows.
PROBE = """
<script>
window.addEventListener("load", () => {
  const out = {};
  try {
    const card = document.querySelector("#viewer-pages .setting");
    out.cards = document.querySelectorAll("#viewer-pages .setting").length;
    const lens = card.querySelector(".tile .lens");
    const r = lens.getBoundingClientRect();
    lens.dispatchEvent(new PointerEvent("pointermove", {
      clientX: r.left + 0.25 * r.width, clientY: r.top + 0.75 * r.height, bubbles: true}));
    const images = [...card.querySelectorAll("img")];
    out.images = images.length;
    out.zoomed = images.filter((img) => img.style.transform === "scale(4)").length;
    out.origins = [...new Set(images.map((img) => img.style.transformOrigin))];
    const slider = card.querySelector(".slider");
    const s = slider.getBoundingClientRect();
    slider.dispatchEvent(new PointerEvent("pointerdown", {
      clientX: s.left + 0.2 * s.width, clientY: s.top + 5, pointerId: 1, bubbles: true}));
    out.divider = slider.getAttribute("aria-valuenow");
    out.clip = card.querySelector(".slider .clip").style.clipPath;
    out.first = card.querySelector("h3").textContent;
    document.querySelectorAll(".pager button")[1].click();
    out.second = document.querySelector("#viewer-pages .setting h3").textContent;
    out.showing = document.getElementById("viewer-showing").textContent;
  } catch (error) {
    out.error = String(error);
  }
  document.documentElement.setAttribute("data-probe", JSON.stringify(out));
});
</script>
"""


def _chromium() -> str | None:
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> tuple[str, str]:
    """(the dumped DOM, Chromium's console lines) of the fake run's report, probe appended."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium (/usr/bin/chromium or chromium on PATH): apt-get install chromium")
    run_dir = tmp_path_factory.mktemp("run")
    _write_run(run_dir)
    html = report.write_report(run_dir).html.read_text()
    probed = run_dir / "probed.html"  # beside report.html, so its relative PNG links hold
    probed.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    profile = tmp_path_factory.mktemp("chromium-profile")
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
        "--window-size=1400,2000", "--dump-dom", probed.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, "\n".join(console)


def _root_attribute(dom: str, name: str) -> str | None:
    tag = re.search(r"<html[^>]*>", dom).group(0)
    found = re.search(rf'{name}="([^"]*)"', tag)
    return None if found is None else found.group(1)


def test_no_console_output_and_no_script_error(page):
    dom, console = page
    assert console == "", console  # the page logs nothing; an uncaught error is logged here
    assert _root_attribute(dom, "data-js-errors") == "0"


def test_every_section_is_there_and_the_viewer_initialised(page):
    dom, _ = page
    for section in SECTIONS:
        assert f'id="{section}"' in dom, section
    for title in ("Provenance", "Leaderboard", "Definitions", "Plots", "Image viewer"):
        assert f">{title}</h2>" in dom, title
    assert _root_attribute(dom, "data-viewer") == "ready"
    settings = len(IMAGES) * len(SIGMAS) * len(SIZES)
    assert _root_attribute(dom, "data-viewer-settings") == str(settings)
    assert 'class="group"' in dom and ">quality</th>" in dom  # grouped leaderboard header
    assert 'href="#def-psnr"' in dom and 'id="def-psnr"' in dom


def test_hostile_strings_stay_text(page):
    dom, _ = page
    assert HOSTILE_CAPTION not in dom and HOSTILE_SUITE not in dom
    assert "&lt;img src=x onerror=" in dom  # the caption, rendered by the viewer as text


def test_slider_zoom_and_pagination_respond(page):
    dom, _ = page
    probe = json.loads(_root_attribute(dom, "data-probe").replace("&quot;", '"'))
    assert "error" not in probe, probe
    assert probe["cards"] == 4  # the default page size
    # reference, native, native+bicubic, pid tiles + both slider layers, all zoomed together
    assert probe["images"] == 6 and probe["zoomed"] == 6
    assert probe["origins"] == ["25% 75%"]
    assert probe["divider"] == "20" and probe["clip"] == "inset(0px 80% 0px 0px)"
    assert probe["first"] != probe["second"]
    assert probe["showing"].startswith("Settings 5–8 of 8 matching")


@pytest.fixture(scope="module")
def linked(tmp_path_factory) -> tuple[str, str, str]:
    """(the DOM, Chromium's console, the link) of report.html opened at the first
    recommendation's viewer link, as a reader following it would."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium (/usr/bin/chromium or chromium on PATH): apt-get install chromium")
    run_dir = tmp_path_factory.mktemp("linked")
    _write_run(run_dir)
    html = report.write_report(run_dir).html
    link = re.search(r'href="(#viewer\?[^"]+)"', html.read_text()).group(1).replace("&amp;", "&")
    profile = tmp_path_factory.mktemp("chromium-profile")
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
        "--window-size=1400,2000", "--dump-dom", html.as_uri() + link,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, "\n".join(console), link


def test_a_recommendation_link_opens_the_viewer_on_its_setting(linked):
    dom, console, link = linked
    assert console == "", console
    assert ">Recommendations</h2>" in dom and 'data-question="pid_or_baseline"' in dom
    showing = re.search(r'id="viewer-showing">([^<]*)<', dom).group(1)
    # one setting per image: backbone, noise and size fixed by the link
    assert f"of {len(IMAGES)} matching the filters" in showing, (link, showing)
