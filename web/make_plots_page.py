"""Write web/plots.html: DVC's plots page with vega, vega-lite and vega-embed inline, so that
`dvc plots show` and `dvc plots diff` draw every plot with no network (DVC's own page loads them
from a CDN). `.dvc/config` names this page (`plots.html_template`).

    npm pack vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0     # three .tgz files, from the npm registry
    python web/make_plots_page.py vega-5.33.1.tgz vega-lite-5.23.0.tgz vega-embed-6.29.0.tgz

Run only to change the versions; record them in web/README.md.
"""
from __future__ import annotations

import hashlib
import sys
import tarfile
from pathlib import Path

BUILDS = {"vega": "package/build/vega.min.js", "vega-lite": "package/build/vega-lite.min.js",
          "vega-embed": "package/build/vega-embed.min.js"}
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- {versions}: inline (BSD-3-Clause, see web/README.md), so the page needs no network -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def main(tarballs: list[str]) -> None:
    scripts, versions = [], []
    for name in BUILDS:
        tgz = next(t for t in tarballs if Path(t).name.startswith(name + "-") and Path(t).name[len(name) + 1].isdigit())
        with tarfile.open(tgz) as tar:
            js = tar.extractfile(BUILDS[name]).read().decode()
        # The source-map comment would make a browser with developer tools open reach for a file that is not here.
        js = "\n".join(line for line in js.splitlines() if not line.startswith("//# sourceMappingURL="))
        if "</script" in js.lower() or "{plot_divs}" in js or "{refresh_tag}" in js:
            raise SystemExit(f"{tgz}: cannot be inlined (it holds '</script' or a DVC placeholder)")
        versions.append(Path(tgz).name.removesuffix(".tgz"))
        scripts.append(f"    <script>{js}</script>")
        print(f"{versions[-1]}: {BUILDS[name]} sha256 {hashlib.sha256(js.encode()).hexdigest()}")
    out = Path(__file__).with_name("plots.html")
    out.write_text(PAGE.format(versions=", ".join(versions), scripts="\n".join(scripts)))
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main(sys.argv[1:])
