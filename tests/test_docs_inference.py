"""docs/inference.md: its example runs and prints what the page says it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "inference.md"


def test_inference_example_prints_the_documented_numbers(monkeypatch):
    text = DOC.read_text()
    code = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(code) == 1, "docs/inference.md should hold one example"
    printed = re.search(r"prints .*?\n```\n(.*?)```", text, flags=re.S).group(1)
    monkeypatch.chdir(DOC.parent.parent)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code[0], "docs/inference.md", "exec"), {})
    got = out.getvalue().strip().splitlines()
    want = printed.strip().splitlines()
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        gn = [float(v) for v in re.findall(r"\d+\.\d+|\d+", g)]
        wn = [float(v) for v in re.findall(r"\d+\.\d+|\d+", w)]
        assert re.sub(r"[\d.]+", "#", g) == re.sub(r"[\d.]+", "#", w), (g, w)
        # the same numbers, up to BLAS/threading differences in the last printed digit
        for a, b in zip(gn, wn, strict=True):
            assert abs(a - b) <= max(0.02, 0.02 * abs(b)), (g, w)
