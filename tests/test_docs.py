"""The documentation's links: every relative link of the README and docs/ reaches a file of the
repository, and every `#anchor` a heading of that file (as GitHub makes anchors from headings)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (`-` and `_` kept), spaces to `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        fenced ^= line.startswith("```")
        if not fenced and (m := re.match(r"#+\s+(.*)", line)):
            found.add(anchor(m.group(1)))
    return found


def broken_links(page: Path) -> list[str]:
    """`page`'s relative links that reach no file, or no heading of it."""
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading {fragment!r} in {dest.name}")
    return broken


def test_every_link_of_the_docs_reaches_its_file_and_heading():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("*/README.md")),
             *sorted(ROOT.glob("data/*/README.md"))]
    assert len(pages) > 8
    broken = {str(p.relative_to(ROOT)): b for p in pages if (b := broken_links(p))}
    assert not broken


def test_a_link_to_a_missing_file_or_heading_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Results on the real data\n```\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text("[a](other.md#results-on-the-real-data) [b](other.md#not-a-heading) [c](gone.md) "
                    "[d](https://example.org/x.md) [e](#top)\n# Top\n")
    assert broken_links(page) == ["other.md#not-a-heading: no heading 'not-a-heading' in other.md",
                                  "gone.md: no such file"]
