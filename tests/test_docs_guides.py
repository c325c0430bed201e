"""The user guides in docs/: their examples print what the pages say; nav and links hold.

- every ```python block of docs/scripting.md runs (in order, in one namespace, from
  the repository root) and prints one number within ``REL_TOL`` of the
  "prints about **X**" that follows it on the page;
- mkdocs.yml lists every page of docs/ and nothing else;
- every relative link in docs/*.md points to an existing file, and the index
  links every page;
- docs/getting_started.md gives the README's install commands verbatim.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GUIDE = DOCS / "scripting.md"
#: chaos turns round-off differences between BLAS builds into a few per cent on
#: the time-mean RMSE of hundreds of cycles; the page says so
REL_TOL = 0.10
#: what one example may take on one loaded CPU core (the page promises ~20 s)
MAX_SECONDS = 30.0

_BLOCK = re.compile(r"```python\n(.*?)```", flags=re.S)
_PRINTS = re.compile(r"prints about \*\*(-?\d+(?:\.\d+)?)\*\*")
_FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def guide_examples(text: str) -> list[tuple[str, float]]:
    """(code, documented value) of each python block: the first "prints about **X**"
    between the block and the next one."""
    blocks = list(_BLOCK.finditer(text))
    out = []
    for i, m in enumerate(blocks):
        end = blocks[i + 1].start() if i + 1 < len(blocks) else len(text)
        said = _PRINTS.search(text, m.end(), end)
        assert said, f"block {i + 1} of {GUIDE.name} is not followed by 'prints about **X**'"
        out.append((m.group(1), float(said.group(1))))
    return out


def test_guide_parser_reads_the_documented_number():
    text = "```python\nprint(1)\n```\nIt prints about **0.25** here.\n```python\nx\n```\n" \
           "prints about **3**"
    assert guide_examples(text) == [("print(1)\n", 0.25), ("x\n", 3.0)]
    with pytest.raises(AssertionError, match="block 1"):
        guide_examples("```python\nprint(1)\n```\nno number\n")


def test_scripting_examples_print_what_the_page_says(monkeypatch, tmp_path):
    import torch

    examples = guide_examples(GUIDE.read_text())
    assert len(examples) >= 2, "the scripting guide lost its examples"
    assert any("Cycle(" in code and "LatentSpace(" not in code for code, _ in examples)
    assert any("LatentSpace(" in code for code, _ in examples)
    monkeypatch.chdir(ROOT)  # the latent example loads models/l96_vae_k32.pt
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # stores go to tmp_path
    namespace: dict = {"__name__": "__docs__"}
    threads = torch.get_num_threads()
    try:
        for i, (code, said) in enumerate(examples, start=1):
            out = io.StringIO()
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(out):
                exec(compile(code, f"{GUIDE.name}, block {i}", "exec"), namespace)
            seconds = time.perf_counter() - t0
            words = out.getvalue().split()
            assert len(words) == 1, f"block {i} should print one number (printed {words})"
            got = float(words[0])
            assert abs(got - said) <= REL_TOL * abs(said), \
                f"block {i} printed {got}, the page says about {said}"
            assert seconds < MAX_SECONDS, f"block {i} took {seconds:.1f} s"
    finally:
        torch.set_num_threads(threads)


def _nav_files(entry) -> list[str]:
    if isinstance(entry, str):
        return [entry]
    if isinstance(entry, dict):
        return [f for v in entry.values() for f in _nav_files(v)]
    if isinstance(entry, list):
        return [f for v in entry for f in _nav_files(v)]
    raise AssertionError(f"unexpected nav entry {entry!r}")


def test_mkdocs_nav_lists_every_page_once():
    conf = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert conf["site_name"] == "latentda"
    assert (ROOT / conf["docs_dir"]).resolve() == DOCS
    nav = _nav_files(conf["nav"])
    assert len(nav) == len(set(nav)), f"pages listed twice in the nav: {nav}"
    missing = [f for f in nav if not (DOCS / f).is_file()]
    assert not missing, f"mkdocs.yml lists pages that do not exist: {missing}"
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    unlisted = sorted(set(pages) - set(nav))
    assert not unlisted, f"pages of docs/ missing from the nav of mkdocs.yml: {unlisted}"
    assert nav[0] == "index.md"


def relative_links(text: str) -> list[str]:
    """Link targets outside fenced code that are not URLs or in-page anchors."""
    text = _FENCE.sub("", text)
    return [t for t in _LINK.findall(text)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_link_finder_skips_urls_anchors_and_code():
    text = "[a](a.md) [b](https://x.org/b.md) [c](#sec) [d](../d.md#x)\n```\n[e](e.md)\n```\n"
    assert relative_links(text) == ["a.md", "../d.md#x"]


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_relative_links_point_to_existing_files(page):
    broken = [t for t in relative_links(page.read_text())
              if not (page.parent / t.split("#")[0]).exists()]
    assert not broken, f"{page.name}: broken links {broken}"


def test_index_links_every_page():
    linked = {t.split("#")[0] for t in relative_links((DOCS / "index.md").read_text())}
    pages = {p.name for p in DOCS.glob("*.md")} - {"index.md"}
    assert not pages - linked, f"docs/index.md does not link {sorted(pages - linked)}"


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_getting_started_gives_the_readme_install_commands():
    readme = [b for b in _bash_blocks((ROOT / "README.md").read_text()) if "pip install" in b]
    assert len(readme) == 2, "README.md should hold its two install commands"
    guide = _bash_blocks((DOCS / "getting_started.md").read_text())
    for cmd in readme:
        assert cmd in guide, f"docs/getting_started.md lacks the README command {cmd!r}"
