"""One vocabulary for both command lines (issue 13, item 1): every flag of one is accepted under
the same name by the other where it applies, help states the actual defaults, ``--config FILE``
and ``--print-config`` work on both, and a flag the chosen mode ignores is refused.

The parsers are the real ones; ``main`` runs in-process (nothing here trains or submits).
"""

from __future__ import annotations

import argparse
import functools

import pytest
import yaml

import pipeline
from components.cli import stages
from components.cli.pipeline import APPLIES, MODES, build_parser
from components.cli.pipeline import main as run_cli
from components.cli.vocabulary import (
    NO_AUGMENT,
    PIPELINE_ONLY,
    PREDICTION,
    STAGE_ONLY,
    TRAINING,
    option_strings,
    stage_dest,
)
from components.kubeflow.cluster import ClusterSettings

#: Options of every parser that are about the command itself.
COMMON = {"--help", "--config", "--print-config", "--debug"}
IMAGES = ["--image", "registry.example/campseg:test", "--gpu-image", "registry.example/campseg-cuda:test"]


@functools.cache
def _default_pipeline():
    return pipeline.build_pipeline(ClusterSettings())


def _build(settings: ClusterSettings):
    """``pipeline.build_pipeline``, the default pipeline built once (building one takes seconds)."""
    return _default_pipeline() if settings == ClusterSettings() else pipeline.build_pipeline(settings)


def cli(argv: list[str]) -> int:
    """``python pipeline.py ARGV`` (the training pipeline) in this process."""
    return run_cli(argv, build_pipeline=_build, steps=pipeline.STEPS)


@functools.cache
def pipeline_parser(name: str) -> argparse.ArgumentParser:
    return build_parser(pipeline.PIPELINES[name][0](ClusterSettings()))


def stage_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = stages.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def long_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for s, a in parser._option_string_actions.items() if s.startswith("--")}


def sample_value(action: argparse.Action) -> str:
    """A value ``action`` accepts, other than its default."""
    if action.choices:
        return str([c for c in action.choices if c != action.default][0])
    if action.type is int:
        return "3"
    if action.type is float:
        return "0.25"
    if getattr(action.type, "__name__", "") == "parse_bool":
        return "false"
    return "some/value"


TABLES = [("training", TRAINING), ("predict", PREDICTION)]


@pytest.mark.parametrize("pipeline_name, table", TABLES)
def test_every_shared_name_is_accepted_by_both_command_lines_with_the_same_meaning(pipeline_name, table):
    pipe = pipeline_parser(pipeline_name)
    pipe_options = long_options(pipe)
    subs = stage_parsers()
    for name, term in table.items():
        names = option_strings(name, table)
        for option in names:
            assert option in pipe_options, f"pipeline.py lacks {option}"
            assert pipe_options[option].dest == name
        for stage in term.stages:
            options = long_options(subs[stage])
            for option in names:
                assert option in options, f"python -m components {stage} lacks {option}"
                assert options[option].dest == stage_dest(name, table), (stage, option)
            # The same value under either name means the same thing on both command lines.
            value = sample_value(options[names[0]])
            required = _required(subs[stage])
            for option in names:
                staged = subs[stage].parse_args([*required, option, value])
                piped = pipe.parse_args(["--run-local", option, value])
                assert getattr(staged, stage_dest(name, table)) == getattr(piped, name) or name == "dataset_uri"


def _required(parser: argparse.ArgumentParser) -> list[str]:
    """Values for the required options of a stage."""
    args = []
    for action in parser._actions:
        if action.required and action.option_strings:
            args += [action.option_strings[0], "x"]
    return args


def test_no_augment_is_the_same_switch_on_both():
    assert stage_parsers()["train"].parse_args(["--run", "r", NO_AUGMENT]).augment is False
    assert pipeline_parser("training").parse_args(["--run-local", NO_AUGMENT]).train_augment is False


@pytest.mark.parametrize("stage, pipeline_name, name", [
    ("evaluate", "training", "evaluate_tta"), ("all", "training", "evaluate_tta"), ("predict", "predict", "predict_tta")])
def test_a_boolean_parameter_alone_is_true_on_both_command_lines(stage, pipeline_name, name):
    """``--tta`` alone switches test-time augmentation on; ``--tta false`` (a config file's form) off."""
    parser = stage_parsers()[stage]
    required = _required(parser)
    assert parser.parse_args(required).tta is False
    assert parser.parse_args([*required, "--tta"]).tta is True
    assert parser.parse_args([*required, "--tta", "false", "--out", "o"]).tta is False
    pipe = pipeline_parser(pipeline_name)
    assert getattr(pipe.parse_args(["--submit", "--tta"]), name) is True
    assert getattr(pipe.parse_args(["--submit", f"--{name.replace('_', '-')}", "false"]), name) is False
    assert getattr(pipe.parse_args(["--submit"]), name) is None  # the pipeline's default: off


def test_every_stage_flag_is_shared_or_explained():
    """A stage flag that a pipeline has no parameter for is listed in STAGE_ONLY with its reason."""
    shared = {}
    for table in (TRAINING, PREDICTION):
        for name, term in table.items():
            for stage in term.stages:
                shared.setdefault(stage, set()).update(option_strings(name, table))
    used_only = set()
    for stage, parser in stage_parsers().items():
        for option in long_options(parser):
            if option in COMMON or option in shared.get(stage, ()) or (option == NO_AUGMENT and stage in ("train", "all")):
                continue
            assert option in STAGE_ONLY, f"{stage} {option}: neither shared nor in STAGE_ONLY"
            used_only.add(option)
    assert used_only == set(STAGE_ONLY), f"stale STAGE_ONLY entries: {set(STAGE_ONLY) - used_only}"


@pytest.mark.parametrize("pipeline_name, table", TABLES)
def test_every_pipeline_flag_is_shared_explained_or_bound_to_a_mode(pipeline_name, table):
    func = pipeline.PIPELINES[pipeline_name][0](ClusterSettings())
    inputs = func.component_spec.inputs
    for name in inputs:
        assert name in table or name in PIPELINE_ONLY, f"--{name}: neither shared nor in PIPELINE_ONLY"
    stage_options = set().union(*(long_options(p) for p in stage_parsers().values()))
    for name in inputs:
        if name in PIPELINE_ONLY:
            assert not set(option_strings(name)) & stage_options, f"{name} is in PIPELINE_ONLY yet a stage takes it"
    for action in build_parser(func)._actions:
        if action.option_strings and action.dest not in inputs and not set(action.option_strings) & COMMON:
            assert action.dest in APPLIES or action.dest in MODES, f"{action.option_strings}: no mode in APPLIES"


# ------------------------------------------------------------------------------------------
# Help
# ------------------------------------------------------------------------------------------
def test_pipeline_help_tells_the_local_defaults(capsys):
    with pytest.raises(SystemExit):
        cli(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--train-epochs EPOCHS, --epochs EPOCHS" in text
    assert "default: 50 on a cluster; --run-local uses 15 unless given" in text
    assert "--run-local uses" not in text.split("--train-batch-size")[1].split("--train-patience")[0]  # 0 (auto) on both
    for name in pipeline.PIPELINES:
        for action in pipeline_parser(name)._actions:
            assert action.help, f"pipeline.py {action.option_strings}: no help"


def test_every_stage_option_has_a_description_and_its_default(capsys):
    for stage, parser in stage_parsers().items():
        for action in parser._actions:
            assert action.help, f"{stage} {action.option_strings}: no help"
        text = " ".join(parser.format_help().split())
        if stage == "train":
            assert "--train-epochs EPOCHS, --epochs EPOCHS maximum number of epochs (default: 15)" in text


# ------------------------------------------------------------------------------------------
# --config and --print-config
# ------------------------------------------------------------------------------------------
def test_stage_config_file_with_command_line_override(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("run: runs/a\nepochs: 3\ntrain_batch_size: 4\ntrain-learning-rate: 1e-3\nno-augment: true\n")
    assert stages.main(["train", "--config", str(config), "--batch-size", "2", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["run"] == "runs/a" and printed["train-epochs"] == 3
    assert printed["train-batch-size"] == 2  # the flag beats the file
    assert printed["train-learning-rate"] == 0.001 and printed["train-augment"] is False
    # What --print-config writes loads back to the same options.
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(printed))
    assert stages.main(["train", "--config", str(again), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == printed


@pytest.mark.parametrize("text, needle", [
    ("epoch: 3\n", "epoch: unknown option"),
    ("epochs: three\n", "epochs: expected an integer, got 'three'"),
    ("epochs: 2.5\n", "epochs: expected an integer, got 2.5"),
    ("architecture: resnet\n", "architecture: 'resnet' is not one of"),
    ("model-name: 12\n", None),  # not a key of train
    ("no-augment: maybe\n", "no-augment: expected true or false"),
    ("- epochs\n", "expected a mapping"),
])
def test_stage_config_errors_name_the_file_and_the_key(tmp_path, capsys, text, needle):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert stages.main(["train", "--run", "r", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    line = [entry for entry in err.splitlines() if entry.startswith("error:")][-1]
    assert str(config) in line
    assert (needle or "model-name: unknown option") in line


def test_pipeline_config_file_and_print_config(tmp_path, capsys):
    config = tmp_path / "local.yaml"
    config.write_text("epochs: 2\ndataset_uri: data/sample\nrunner: subprocess\nno-augment: true\n")
    assert cli(["--run-local", "--config", str(config), "--train-epochs", "4", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train-epochs"] == 4 and printed["dataset-uri"] == "data/sample"
    assert printed["train-batch-size"] == 0  # auto: 8 on this CPU, as the run would get it
    assert printed["train-augment"] is False
    assert "schedule" not in printed and "image" not in printed  # only what --run-local takes
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(printed))
    assert cli(["--run-local", "--config", str(again), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == printed
    # On a cluster the pipeline's own defaults apply.
    assert cli(["--submit", "--dataset-uri", "s3://b/d", *IMAGES, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train-epochs"] == 50 and printed["image"] == IMAGES[1]


@pytest.mark.parametrize("text, needle", [
    ("run-local: true\n", "run-local: not a config key (the mode is given on the command line)"),
    ("train-epoch: 3\n", "train-epoch: unknown option"),
    ("train-epochs: '3x'\n", "train-epochs: expected an integer"),
    ("force-retrain: 2\n", "force-retrain: expected true or false"),
    ("model-name: 12\n", "model-name: expected a string, got 12 (quote it)"),
    ("schedule: '0 0 3 * * *'\n", "schedule goes with --submit, not --run-local"),
])
def test_pipeline_config_errors_name_the_file_and_the_key(tmp_path, capsys, text, needle):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    out = tmp_path / "run"
    assert cli(["--run-local", "--output-dir", str(out), "--config", str(config)]) == 2
    line = [entry for entry in capsys.readouterr().err.splitlines() if entry.startswith("error:")][-1]
    assert str(config) in line and needle in line
    assert not out.exists()


def test_missing_config_file_is_one_error_line(tmp_path, capsys):
    assert cli(["--compile", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert f"--config {tmp_path / 'nope.yaml'}" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# Flags of another mode
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, needle", [
    (["--run-local", "--schedule", "0 0 3 * * *"], "--schedule goes with --submit, not --run-local"),
    (["--compile", "--host", "http://kfp"], "--host goes with --submit, not --compile"),
    (["--compile", "--runner", "subprocess"], "--runner goes with --run-local, not --compile"),  # its default value
    (["--compile", "--epochs", "3"], "--epochs goes with --run-local or --submit, not --compile"),
    (["--compile", "--train-epochs", "3"], "--train-epochs goes with --run-local or --submit, not --compile"),
    (["--compile", "--push"], "--push goes with --build-images, not --compile"),
    (["--compile", "--output-dir", "runs/local"], "--output-dir goes with --run-local, not --compile"),
    (["--run-local", "--output", "p.yaml"], "--output goes with --compile or --build-images, not --run-local"),
    (["--run-local", "--retries", "3"], "--retries goes with --compile, --submit or --build-images, not --run-local"),
    (["--run-local", "--image", "x"], "--image goes with --run-local only with --runner docker"),
    (["--run-local", "--package", "p.yaml"], "--package goes with --submit, not --run-local"),
    (["--submit", "--dataset-uri", "s3://b/d", "--package", "p.yaml", "--retries", "2"],
     "--package uploads the YAML as compiled, with its images and cluster settings: drop --retries"),
])
def test_flags_of_another_mode_are_refused(tmp_path, capsys, monkeypatch, flags, needle):
    monkeypatch.chdir(tmp_path)  # nothing may be written: no pipeline.yaml, no runs/local
    assert cli(flags) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert list(tmp_path.iterdir()) == []


def test_a_flag_of_the_mode_given_with_its_default_value_is_fine(tmp_path, capsys):
    assert cli(["--run-local", "--runner", "subprocess", "--output-dir", "runs/local",
                          "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["runner"] == "subprocess"


def test_repeatable_options_on_the_command_line_replace_the_files(tmp_path, capsys):
    config = tmp_path / "all.yaml"
    config.write_text("out: runs/x\ndata: data/sample\nprovider: [Team A, Team B]\n")
    assert stages.main(["all", "--config", str(config), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["provider"] == ["Team A", "Team B"] and printed["dataset-uri"] == "data/sample"
    assert stages.main(["all", "--config", str(config), "--provider", "Team C", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["provider"] == ["Team C"]
