"""The report opens in headless Chromium (Debian's `chromium`) and every embedded image decodes and shows.

A copy of the page gets a probe script that, once the page has loaded, writes what the browser sees
(each image's decoded and displayed size, the page's size) into the DOM, which `--dump-dom` prints.
"""
import json
import re
import shutil
import subprocess
import tempfile

import pytest

from kdistill.report.build import build_report

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--window-size=1280,900", "--virtual-time-budget=10000", "--dump-dom"]
PROBE = """<pre id="kd-probe"></pre><script>
window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => ({complete: i.complete, natural: i.naturalWidth, shown: i.clientWidth}));
  document.getElementById("kd-probe").textContent = JSON.stringify({title: document.title, images: imgs,
    height: document.body.scrollHeight, overflow: document.documentElement.scrollWidth > window.innerWidth});
});
</script></body>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("headless Chromium is needed to check that the report renders: run `apt-get install -y chromium` "
                    "(Debian's package; `make test` installs it)", pytrace=False)
    return found


def test_report_renders_in_headless_chromium_with_its_images(make_run, tmp_path):
    browser = chromium()
    runs = [make_run("small", 100_000, 16.0, retention=0.7), make_run("large", 500_000, 10.5, retention=0.98)]
    paths = build_report(runs, tmp_path / "out", title="kdistill report <test>")
    page = open(paths["html"]).read()
    expected_images = len(re.findall(r"<img ", page))
    probed = tmp_path / "out" / "probed.html"
    probed.write_text(page.replace("</body>", PROBE))
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", probed.as_uri()],
                              capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="kd-probe">(.*?)</pre>', done.stdout, re.S)
    assert done.returncode == 0 and found and found.group(1), done.stderr[-2000:]
    seen = json.loads(found.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    assert seen["title"] == "kdistill report <test>"
    assert len(seen["images"]) == expected_images == 5
    for img in seen["images"]:
        assert img["complete"] and img["natural"] > 300 and img["shown"] > 300, img
    assert seen["height"] > 2000 and not seen["overflow"]
