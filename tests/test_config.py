"""One home for defaults and choices: the CLI, train() and run.json cannot drift from keras_pneumonia.config."""

import dataclasses

import pytest

from keras_pneumonia import augmentation, callbacks
from keras_pneumonia.cli import build_parser
from keras_pneumonia.config import CHOICES, DEFAULT_IMAGE_SIZE, DEFAULTS, TrainConfig


def _train_action(dest):
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    return next(a for a in train._actions if a.dest == dest)


def test_the_cli_defaults_are_the_config_defaults():
    args = build_parser().parse_args(["train", "data", "--output", "run"])
    assert TrainConfig.from_namespace(args) == DEFAULTS


def test_the_cli_builds_the_config_from_its_arguments_alone():
    argv = ["train", "data", "-o", "run", "--epochs", "3", "--no-class-weight", "--no-augmentation", "--ema"]
    config = TrainConfig.from_namespace(build_parser().parse_args(argv))
    assert config == dataclasses.replace(DEFAULTS, epochs=3, class_weight=False, augmentation="none", ema=True)


def test_train_takes_a_config_and_refuses_unknown_settings(tmp_path):
    from keras_pneumonia.training import resolve_config, train

    assert resolve_config(TrainConfig(epochs=4), {"seed": 7}) == TrainConfig(epochs=4, seed=7)
    with pytest.raises(TypeError, match="epoch_count"):
        train(tmp_path, tmp_path / "run", epoch_count=3)
    with pytest.raises(ValueError, match="epochs"):
        train(tmp_path, tmp_path / "run", TrainConfig(), epochs=0)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_the_cli_choices_are_the_config_choices(name):
    assert tuple(_train_action(name).choices) == CHOICES[name]


def test_the_presets_behind_the_choices_exist():
    assert set(CHOICES["augmentation"]) == set(augmentation.PRESETS)
    assert set(CHOICES["callbacks"]) <= set(callbacks.PRESETS)


def test_one_default_input_size_everywhere():
    import inspect

    import keras_pneumonia as kp

    for function in (kp.PneumoniaCNN.__init__, kp.load_chest_xray):
        assert inspect.signature(function).parameters["image_size"].default == DEFAULT_IMAGE_SIZE, function
    assert TrainConfig().image_size == DEFAULT_IMAGE_SIZE
    assert _train_action("image_size").default == DEFAULT_IMAGE_SIZE


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs"),
        ({"validation_split": 1.0}, "validation_split"),
        ({"threshold": 1.5}, "threshold"),
        ({"kaggle_val": "merge"}, "kaggle_val"),
        ({"learning_rate": 0.0}, "learning_rate"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


@pytest.mark.slow
def test_an_image_size_no_machine_can_hold_is_refused_before_anything_is_allocated(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "keras_pneumonia", "train", str(tmp_path), "-o", str(tmp_path / "run"),
         "--image-size", "100000"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "`image_size` must be at most 1024 pixels" in done.stderr and "GiB" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("backend", "why"), [("nonsense", "Unable to import backend"), ("jax", "jax")])
def test_a_backend_that_cannot_load_is_a_one_line_error(backend, why, tmp_path):
    import importlib.util
    import os
    import subprocess
    import sys

    if backend == "jax" and importlib.util.find_spec("jax") is not None:
        pytest.skip("jax is installed here; the case needs a machine without it")
    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run(
        [sys.executable, "-m", "keras_pneumonia", "predict", "tests/data/chest_xray/test/NORMAL"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"Keras could not load its backend (KERAS_BACKEND={backend})" in done.stderr and why in done.stderr


def test_every_choice_list_is_declared_once_in_config():
    """The modules and the command line read their choices from config: they cannot drift."""
    import importlib

    from keras_pneumonia import backbones, export, models
    from keras_pneumonia.config import CLASS_NAMES, MODEL_CHOICES

    gradcam = importlib.import_module("keras_pneumonia.gradcam")  # the package exports a function of that name

    assert tuple(sorted(backbones.BACKBONES)) == tuple(sorted(MODEL_CHOICES["backbone"]))
    assert models.HEADS is MODEL_CHOICES["head"] and models.NORMALIZATIONS is MODEL_CHOICES["normalization"]
    assert export.FORMATS is MODEL_CHOICES["export_format"] and gradcam.METHODS is MODEL_CHOICES["gradcam_method"]
    assert models.DEFAULT_CLASS_NAMES is CLASS_NAMES
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    by_flag = {
        ("train", "--head"): "head",
        ("train", "--normalization"): "normalization",
        ("train", "--backbone"): "backbone",
        ("train", "--channels"): "channels",
        ("predict", "--method"): "gradcam_method",
        ("export", "--format"): "export_format",
    }
    for (command, flag), key in by_flag.items():
        action = next(a for a in commands[command]._actions if flag in a.option_strings)
        assert tuple(action.choices) == MODEL_CHOICES[key], (command, flag)
