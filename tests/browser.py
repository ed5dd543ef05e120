"""Open a page in headless Chromium with the network cut, as a user on an offline machine would, and
report what drew: for each Vega plot (`vegaEmbed('#id', ...)` in the page) the size of its canvas
or SVG, for each image whether it loaded. Optionally a screenshot of the page."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

# Any http(s) request goes to a proxy on a closed port: the page gets no network, file:// still works.
OFFLINE = ["--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--allow-file-access-from-files", "--hide-scrollbars"]
PROBE = """
<script>
window.addEventListener('load', function () {
  setTimeout(function () {
    var out = {vega: {}, images: {}};
    (window.__tslocVegaIds || []).forEach(function (id) {
      var el = document.getElementById(id), drawn = el && el.querySelector('canvas, svg');
      var r = drawn ? drawn.getBoundingClientRect() : {width: 0, height: 0};
      out.vega[id] = {element: drawn ? drawn.tagName.toLowerCase() : null, width: r.width, height: r.height};
    });
    document.querySelectorAll('img').forEach(function (img) {
      out.images[img.getAttribute('src')] = img.complete && img.naturalWidth > 0;
    });
    document.body.setAttribute('data-tsloc-check', JSON.stringify(out));
  }, 3000);
});
</script>
"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def check_page(index: Path, profile: Path, screenshot: Path | None = None) -> dict:
    """What drew in `index` (a page written by `dvc plots show`): {"vega": {id: {...}}, "images": {src: bool}}."""
    html = index.read_text()
    ids = re.findall(r"vegaEmbed\('#([^']+)'", html)
    end = html.rindex("</body>")
    probe = f"<script>window.__tslocVegaIds = {json.dumps(ids)};</script>{PROBE}"
    page = index.with_name("check.html")  # beside index.html: the images' relative paths hold
    page.write_text(html[:end] + probe + html[end:])
    base = [chromium(), *FLAGS, *OFFLINE, f"--user-data-dir={profile}", "--virtual-time-budget=20000"]
    proc = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    found = re.search(r'data-tsloc-check="([^"]*)"', proc.stdout)
    if not found:
        raise AssertionError(f"the page never reported (chromium exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    if screenshot is not None:
        subprocess.run([*base, "--window-size=1280,2400", f"--screenshot={screenshot}", index.as_uri()],
                       capture_output=True, timeout=180, check=True)
    return result
