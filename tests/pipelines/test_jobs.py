"""Typed jobs (pipelines._jobs): every field a flag with its default and help, --preset < --config <
flags < --set, validation before any work as one line, and jobs that compose as values."""

from __future__ import annotations

import dataclasses
import importlib
import json

import pytest

from gendet.config import ConfigError
from gendet.method.gendet.config import PRESETS, TrainConfig, preset
from gendet.mlops.gate import GateConfig
from helpers.cli import job_of, run_cli
from pipelines import _jobs, cli, extract, train


def test_every_field_is_a_flag_with_the_configs_own_default():
    job = job_of(train, ["store", "--train-subsets", "sd"])
    assert job == train.TrainJob(features="store", train=TrainConfig(train_subsets=("sd",)))
    assert job.gate == GateConfig() and job.workers.num_workers == 1
    flags = {f.flag for f in _jobs.job_fields(train.TrainJob).values()}
    assert {"--alpha", "--num-workers", "--gate.max-family-drop", "--eval-splits", "--train-subsets"} <= flags
    assert {"--" + f.name.replace("_", "-") for f in dataclasses.fields(TrainConfig)} <= flags


def test_flags_set_fields_with_their_types_choices_and_comma_lists():
    job = job_of(extract, ["s/", "f/", "--batch-size", "7", "--num-gpus", "0.5", "--precision", "bf16", "--read-tasks", "3"])
    cfg = job.extract
    assert (cfg.shards, cfg.features, cfg.batch_size, cfg.num_gpus, cfg.precision, cfg.read_tasks) == \
        ("s/", "f/", 7, 0.5, "bf16", 3)
    assert cfg.encoder == "spectrum:v2"  # the encoder the README, the demo and every model use
    with pytest.raises(SystemExit):  # a Literal field offers its choices only
        job_of(extract, ["s/", "f/", "--precision", "fp8"])
    job = job_of(train, ["store", "--train-subsets", "a,b", "--methods", "gendet,teacher", "--eval-splits", "val",
                         "--gate.max-family-drop", "0.05", "--no-use-gpu"])
    assert job.train.train_subsets == ("a", "b") and job.train.methods == ("gendet", "teacher")
    assert job.eval_splits == ("val",) and job.gate.max_family_drop == 0.05


def test_config_file_preset_flags_and_set_apply_in_that_order(tmp_path):
    (tmp_path / "job.yaml").write_text("alpha: 0.3\nmargin: 1.5\nrotations: 4\nmethods: [gendet, teacher]\n"
                                       "gate: {margin: 0.01}\nworkers.num_workers: 3\nfeatures: ignored\n")
    job = job_of(train, ["store", "--train-subsets", "sd", "--preset", "demo", "--config", tmp_path / "job.yaml",
                         "--rotations", "3", "--set", "alpha=0.7", "--set", "student-lr=2e-4",
                         "--set", "classifier_input=both"])
    cfg = job.train
    assert (cfg.alpha, cfg.margin, cfg.rotations, cfg.classifier_input, cfg.student_lr) == (0.7, 1.5, 3, "both", 2e-4)
    assert cfg.methods == ("gendet", "teacher") and cfg.teacher_epochs == PRESETS["demo"]["teacher_epochs"]  # file, preset
    assert job.gate.margin == 0.01 and job.workers.num_workers == 3 and job.features == "store"
    assert job.train == preset("demo", train_subsets=("sd",), alpha=0.7, margin=1.5, rotations=3, methods=("gendet", "teacher"),
                               classifier_input="both", student_lr=2e-4)


def test_a_logged_job_runs_again_through_config(tmp_path):
    job = job_of(train, ["store", "--train-subsets", "sd", "--alpha", "0.4", "--register", "m", "--gate.margin", "0.1"])
    (tmp_path / "job.json").write_text(json.dumps(dataclasses.asdict(job)))
    assert job_of(train, ["store", "--config", tmp_path / "job.json"]) == job


def test_every_training_knob_has_a_set_spelling_that_parses_its_own_default():
    base = job_of(train, ["store", "--train-subsets", "sd"]).train
    for f in dataclasses.fields(TrainConfig):
        value = getattr(base, f.name)
        text = ",".join(value) if isinstance(value, tuple) else str(value)
        if text:
            got = job_of(train, ["store", "--train-subsets", "sd", "--set", f"{f.name}={text}"]).train
            assert getattr(got, f.name) == value, f.name


@pytest.mark.parametrize(("flag", "needle"), [
    ("alpha=-1", "alpha: -1.0; must be >= 0"), ("alhpa=1", "unknown field 'alhpa'"), ("alpha", "expected KEY=VALUE"),
    ("classifier_input=fakes", "choose from raw, augmented, both"),
    ("rotations=two", "rotations=two: expected a value of type int"),
    ("shots=sd=0", "positive integer"), ("gate.real_floor=2", "gate.real_floor 2.0: must be in [0, 1]"),
    ("num_workers=0", "--num-workers 0: must be >= 1"), ("use_gpu=maybe", "not a boolean"),
])
def test_bad_knobs_are_one_line_errors_before_work(flag, needle, capsys):
    assert run_cli(train, ["no-such-store", "--train-subsets", "sd", "--set", flag]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.startswith("gendet: error: ") and err.count("\n") == 1


def test_a_bad_config_file_is_one_line(tmp_path, capsys):
    (tmp_path / "c.json").write_text('{"alpha": 0.1, "learning_rate": 3}')
    (tmp_path / "bin.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    for name, needle in (("c.json", "unknown field 'learning_rate'"), ("bin.json", "not a JSON text file"),
                         ("missing.yaml", "file not found")):
        assert run_cli(train, ["store", "--train-subsets", "sd", "--config", tmp_path / name]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1


def test_an_empty_training_set_is_refused_before_work(capsys):
    assert run_cli(train, ["store", "--train-subsets", ""]) == 2
    assert "--train-subsets: empty" in capsys.readouterr().err


@pytest.mark.parametrize("verb", sorted(cli.available_verbs()))
def test_every_job_shows_its_defaults_and_an_example(verb, capsys):
    module = importlib.import_module(cli.VERBS[verb][0])
    with pytest.raises(SystemExit) as done:
        _jobs.parse(module.JOB, ["--help"], prog=f"gendet {verb}")
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: gendet {verb}" in text and "(default:" in text and "Example" in text and f"gendet {verb} " in text
    assert "--config FILE" in text and "--set KEY=VALUE" in text
    assert "``" not in text and "issue" not in text.lower()  # no reST markup, no tracker bookkeeping


def test_fix_derives_its_training_job_from_the_parent_job_as_a_value(tmp_path):
    from pipelines import fix

    parent = job_of(train, ["store", "--train-subsets", "sd", "--preset", "demo", "--alpha", "0.4", "--eval-splits", "test",
                            "--encoder", "spectrum:v2", "--shots", "sd=5"])
    logged = json.loads(json.dumps(dataclasses.asdict(parent)))  # as MLflow holds it: job.json
    job = fix.FixJob(features="store2", subsets=("sdedit",), shots=8, out=str(tmp_path / "fix"))
    retrain = fix.train_job(job, logged, "gendet", "fix-run")
    assert retrain.train == dataclasses.replace(parent.train, train_subsets=("sd", "sdedit"), shots=("sdedit=8",))
    assert (retrain.features, retrain.eval_splits, retrain.encoder, retrain.register, retrain.name) == \
        ("store2", ("test",), "spectrum:v2", "gendet", "fix-run")


def test_jobs_validate_when_built_as_values_too():
    with pytest.raises(ConfigError, match="--train-subsets: empty"):
        train.TrainJob(features="store")
    with pytest.raises(ConfigError, match="gate.margin"):
        GateConfig(margin=-1)
