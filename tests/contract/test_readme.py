"""The README's code works as written: the ONNX snippet runs, and the stage-by-stage example uses
only paths a fresh clone has."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.support.paths import REPO

README = (REPO / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def _code(section: str, language: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, blocks
    return blocks[0]


def test_onnx_snippet_is_ten_lines_and_runs(trained_run, sample_data, tmp_path):
    snippet = _code(_section("Use the ONNX model in 10 lines"), "python")
    assert len(snippet.strip().splitlines()) <= 12  # ten lines of work, two of imports
    local = tmp_path / "runs" / "local"  # what `pipeline.py --run-local` leaves, from the trained run
    local.mkdir(parents=True)
    for name in ("metadata", "models"):
        os.symlink(trained_run / name, local / name)
    os.symlink(sample_data, local / "sample-data")
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    share, name = proc.stdout.split()
    assert share.endswith("%") and 0 <= float(share[:-1]) <= 100 and name == "camp"


def test_stage_by_stage_example_needs_nothing_outside_the_clone():
    commands = _code(README[README.index("### Stage by stage"):README.index("\n## Where to look")], "bash")
    assert "../" not in commands and " DIR" not in commands and " OUT" not in commands
    assert commands.startswith("python -m components sample-data --out data/sample")
