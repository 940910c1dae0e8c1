"""Progress on stderr, results on stdout: ``python -m components all ... | python -m json.tool`` works,
every stage prints its ``[i/n]`` line on stderr, and the pieces behind those lines."""

from __future__ import annotations

import io
import json
import re

import pytest

from components.kubeflow.local_log import RunLog, condensed, failure_tail
from components.reporting.progress import EpochLines, ProgressLine, StageLines, duration_text, stage_text
from tests.support.cli import run_components
from tests.support.datasets import make_dataset

TINY = ["--epochs", "1", "--base-channels", "4", "--depth", "2"]
ALL_STAGES = ["stats", "train", "export", "evaluate", "dlpk", "stac"]


@pytest.fixture(scope="module")
def all_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("console")
    data = make_dataset(root / "data")
    proc = run_components("all", "--data", str(data), "--out", str(root / "run"), *TINY)
    return data, root / "run", proc


def test_all_prints_only_the_summary_json_on_stdout(all_run):
    _, run, proc = all_run
    summary = json.loads(proc.stdout)  # the whole of stdout: no bar, no Lightning line, no warning
    assert summary == json.loads((run / "summary.json").read_text())
    assert "Epoch" not in proc.stdout and "GPU available" not in proc.stdout


def test_every_stage_of_all_prints_its_lines_on_stderr_in_order(all_run):
    _, _, proc = all_run
    started = re.findall(r"^\[(\d)/6\] (\S+) \.\.\.$", proc.stderr, re.M)
    ended = re.findall(r"^\[(\d)/6\] (\S+) \.\.\. done in \d+\.\d s$", proc.stderr, re.M)
    expected = [(str(i), name) for i, name in enumerate(ALL_STAGES, 1)]
    assert started == expected and ended == expected, proc.stderr[-3000:]
    # training's progress off a terminal: one line per epoch; the scoring's line of the evaluation
    assert re.search(r"^train: epoch 1/1 \[\d\d:\d\d\] train_loss \d\.\d{3}, val_loss", proc.stderr, re.M)
    assert re.search(r"^evaluate: scoring: \d+/\d+ chips", proc.stderr, re.M)


def test_a_single_stage_prints_its_one_line(all_run, tmp_path):
    data, _, _ = all_run
    proc = run_components("stats", "--data", str(data), "--out", str(tmp_path / "run"), "--depth", "2")
    assert json.loads(proc.stdout)["num_chips"] == 12
    assert re.findall(r"^\[1/1\] stats .*$", proc.stderr, re.M) == [
        re.search(r"^\[1/1\] stats \.\.\. done in \d+\.\d s$", proc.stderr, re.M).group(0)]


def test_a_failed_stage_says_so_before_the_error_line(tmp_path):
    proc = run_components("stats", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    failed, error = proc.stderr.strip().splitlines()[-2:]
    assert re.fullmatch(r"\[1/1\] stats \.\.\. failed after \d+\.\d s", failed), proc.stderr
    assert error.startswith("error: ")


def test_stage_and_duration_texts():
    assert stage_text(3, 7, "train") == "[3/7] train ..."
    assert stage_text(3, 7, "train", 42.06) == "[3/7] train ... done in 42.1 s"
    assert stage_text(3, None, "train", 3, failed=True) == "[3] train ... failed after 3.0 s"
    assert duration_text(125) == "2 min 05 s" and duration_text(3725) == "1 h 02 min"


def test_stage_lines_number_stages_and_report_a_failure():
    out = io.StringIO()
    lines = StageLines(2, stream=out)
    with lines.stage("stats"):
        pass
    with pytest.raises(ValueError), lines.stage("train"):
        raise ValueError("boom")
    text = out.getvalue().splitlines()
    assert text[0] == "[1/2] stats ..." and text[1].startswith("[1/2] stats ... done in ")
    assert text[2] == "[2/2] train ..." and text[3].startswith("[2/2] train ... failed after ")


def test_a_progress_line_off_a_terminal_is_printed_at_the_end_of_a_short_loop():
    out = io.StringIO()
    progress = ProgressLine("statistics: checking", stream=out, every=60, unit="chips")
    for done in range(1, 6):
        progress(done, 5, 0.5 * done)
    assert out.getvalue() == "statistics: checking: 5/5 chips [00:02<00:00, 2.00 chips/s]\n"


def test_epoch_lines():
    out = io.StringIO()
    EpochLines(15, stream=out).epoch_ended({"epoch": 2, "seconds": 12.5, "train_loss": 0.4123, "val_loss": 0.398,
                                            "val_iou": 0.6111, "lr": 0.001})
    assert out.getvalue() == "train: epoch 3/15 [00:12] train_loss 0.412, val_loss 0.398, val_iou 0.611\n"


#: What kfp.local writes for a run whose second step fails (colour codes included, abridged).
KFP_LOG = """\
\x1b[0m21:29:49.281 - INFO - Running pipeline: \x1b[95m'p'\x1b[0m
21:29:49.353 - INFO - Executing task \x1b[96m'start-tracking'\x1b[0m
21:29:49.353 - INFO - Streamed logs:

    [KFP Executor 2026-11-27 21:29:50,100 INFO]: Got executor_input:
    {
        "inputs": {"parameterValues": {"x": 1}}
    }
    started
21:30:11.840 - INFO - Task \x1b[96m'start-tracking'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
21:30:11.841 - INFO - Executing task \x1b[96m'train-model'\x1b[0m
/site-packages/kfp/local/task_executor.py:100: UserWarning: settings have no effect
  _warn_local_only_noops(task_name, task_spec, executor_spec.container)
21:30:11.842 - INFO - Streamed logs:

    train: epoch 1/2 [00:01] train_loss 0.500
    Traceback (most recent call last):
      File "x.py", line 1, in <module>
        main()
    components.contracts.errors.DatasetError: chips/a.png: unreadable

21:30:22.456 - ERROR - Task \x1b[96m'train-model'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m
21:30:22.457 - INFO - Executing task \x1b[96m'end-tracking'\x1b[0m
"""


def test_a_run_log_shows_one_line_per_step_and_keeps_everything_in_the_file(tmp_path):
    log, console = io.StringIO(), io.StringIO()
    run_log = RunLog(log, console, total=3)
    for piece in (KFP_LOG[:100], KFP_LOG[100:]):  # writes need not end at a line's end
        run_log.write(piece)
    run_log.end()
    assert log.getvalue() == KFP_LOG
    assert re.fullmatch(r"\[1/3\] start-tracking \.\.\. done in \d+\.\d s\n"
                        r"\[2/3\] train-model \.\.\. failed after \d+\.\d s\n"
                        r"\[3/3\] end-tracking \.\.\. stopped\n", console.getvalue()), console.getvalue()
    assert condensed(run_log.step_lines("train-model")) == [
        "train: epoch 1/2 [00:01] train_loss 0.500", "(traceback in the log file)",
        "components.contracts.errors.DatasetError: chips/a.png: unreadable"]
    assert condensed(run_log.step_lines("start-tracking")) == [
        "[KFP Executor 2026-11-27 21:29:50,100 INFO]: Got executor_input: (in the log file)", "started"]
    tail = failure_tail(run_log, "train-model", tmp_path / "kfp-local.log").splitlines()
    assert tail[0] == f"--- the last 3 lines of step train-model's log (all of it in {tmp_path / 'kfp-local.log'}) ---"
    assert tail[-2:] == ["components.contracts.errors.DatasetError: chips/a.png: unreadable", "---"]


def test_a_verbose_run_log_echoes_everything_and_adds_nothing():
    log, console, echo = io.StringIO(), io.StringIO(), io.StringIO()
    run_log = RunLog(log, console, total=3, echo=echo)
    run_log.write(KFP_LOG)
    run_log.end()
    assert echo.getvalue() == log.getvalue() == KFP_LOG and console.getvalue() == ""
