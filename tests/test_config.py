"""Configs, recipe arguments, overrides, validation, the registries and the command line."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flax import nnx

from vision_jax import config as config_lib
from vision_jax.config import load_config, validate
from vision_jax.data.sources import SOURCES
from vision_jax.data.views import AUGMENTATIONS
from vision_jax.evaluators import EVALUATORS
from vision_jax.methods import METHODS
from vision_jax.models import MODELS

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "configs" / "simclr_digits.py")


# ----------------------------------------------------------------------------------------------
# Recipes and their arguments
# ----------------------------------------------------------------------------------------------


def test_load_recipe_by_relative_path(monkeypatch):
    monkeypatch.chdir(REPO)
    config = load_config("configs/simclr_digits.py")
    assert config.method.name == "simclr"
    assert config.data.augment.name == "simclr"
    assert config.model.name == "cnn" and config.data.source.name == "digits"
    assert set(config.evaluators.keys()) == {"knn", "linear_probe"}


def test_runlocal_shrinks_the_run():
    full, local = load_config(RECIPE), load_config(RECIPE + ":runlocal")
    assert local.total_steps < full.total_steps
    assert local.batch_size < full.batch_size
    assert local.evaluators.linear_probe.epochs < full.evaluators.linear_probe.epochs


def test_recipe_argument_sets_an_int():
    config = load_config(RECIPE + ":steps=123")
    assert config.total_steps == 123 and type(config.total_steps) is int
    both = load_config(RECIPE + ":runlocal,seed=4")
    assert both.seed == 4 and both.total_steps == load_config(RECIPE + ":runlocal").total_steps


def test_unknown_recipe_argument_errors_with_suggestion():
    with pytest.raises(ValueError, match=r"Unknown recipe argument 'stepz'\. Did you mean 'steps'"):
        load_config(RECIPE + ":stepz=3")


def test_mistyped_recipe_argument_errors():
    with pytest.raises(ValueError, match=r"recipe argument 'steps' expects a int, got 'abc'"):
        load_config(RECIPE + ":steps=abc")
    with pytest.raises(ValueError, match=r"recipe argument 'steps' expects a int, got '1\.5'"):
        load_config(RECIPE + ":steps=1.5")


def test_missing_recipe_file_errors(tmp_path):
    missing = str(tmp_path / "nope.py")
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_config(missing + ":runlocal")


# ----------------------------------------------------------------------------------------------
# Command-line overrides
# ----------------------------------------------------------------------------------------------


def test_float_override():
    config = load_config(RECIPE, ["optimizer.lr=0.5"])
    assert config.optimizer.lr == 0.5


def test_int_literal_for_float_field_becomes_float():
    config = load_config(RECIPE, ["optimizer.lr=5"])
    assert config.optimizer.lr == 5.0 and type(config.optimizer.lr) is float


def test_misspelt_override_key_errors_with_suggestion():
    with pytest.raises(ValueError, match=r"'optimizer\.lrr'\. Did you mean 'lr'"):
        load_config(RECIPE, ["optimizer.lrr=0.1"])
    with pytest.raises(ValueError, match=r"'optimiser'\. Did you mean 'optimizer'"):
        load_config(RECIPE, ["optimiser.lr=0.1"])


def test_mistyped_override_value_errors():
    with pytest.raises(ValueError, match=r"--config\.optimizer\.lr expects a float, got 'abc'"):
        load_config(RECIPE, ["optimizer.lr=abc"])
    with pytest.raises(ValueError, match=r"--config\.total_steps expects a int, got '1\.5'"):
        load_config(RECIPE, ["total_steps=1.5"])
    with pytest.raises(ValueError, match=r"--config\.checkpoint\.use_async expects a boolean"):
        load_config(RECIPE, ["checkpoint.use_async=maybe"])


def test_override_without_value_errors():
    with pytest.raises(ValueError, match=r"'optimizer\.lr' must look like field\.name=value"):
        load_config(RECIPE, ["optimizer.lr"])


def test_override_below_a_value_errors():
    with pytest.raises(ValueError, match=r"'total_steps' is a value, not a section.*'total_steps\.x'"):
        load_config(RECIPE, ["total_steps.x=3"])


@pytest.mark.parametrize("raw, expected", [("false", False), ("False", False), ("0", False), ("true", True)])
def test_bool_override(raw, expected):
    config = load_config(RECIPE, [f"checkpoint.use_async={raw}"])
    assert config.checkpoint.use_async is expected


def test_tuple_override():
    config = load_config(RECIPE, ["model.widths=(8,16)"])
    assert config.model.widths == (8, 16) and isinstance(config.model.widths, tuple)
    as_list = load_config(RECIPE, ["model.widths=[4, 8, 12]"])
    assert as_list.model.widths == (4, 8, 12) and isinstance(as_list.model.widths, tuple)


def test_string_and_nested_free_form_overrides():
    config = load_config(RECIPE, ["data.train_split=train[:50%]", "evaluators.knn.k=5", "method.temperature=0.1"])
    assert config.data.train_split == "train[:50%]"
    assert config.evaluators.knn.k == 5
    assert config.method.temperature == 0.1


# ----------------------------------------------------------------------------------------------
# validate()
# ----------------------------------------------------------------------------------------------


def test_validate_rejects_unknown_top_level_key():
    config = copy.deepcopy(load_config(RECIPE))
    with config.unlocked():
        config.totl_steps = 5
    with pytest.raises(ValueError, match=r"Unknown config key 'totl_steps'\. Did you mean 'total_steps'"):
        validate(config)


def test_validate_rejects_unknown_nested_key():
    config = config_lib.default_config()
    config.optimizer.warmup_step = 10
    with pytest.raises(ValueError, match=r"'optimizer\.warmup_step'\. Did you mean 'warmup_steps'"):
        validate(config)
    config = config_lib.default_config()
    config.data.image_sise = 10
    with pytest.raises(ValueError, match=r"'data\.image_sise'\. Did you mean 'image_size'"):
        validate(config)


def test_free_form_sections_accept_any_keys():
    config = config_lib.default_config()
    config.model.anything_goes = 1
    config.method.some_option = "x"
    config.data.source.root = "/somewhere"
    config.data.augment.strength = 0.3
    config.data.device_augment.strength = 0.3
    config.data.eval_augment.size = 224
    config.evaluators.made_up = dict(a=1)
    config.optimizer.groups.head = dict(pattern="^head/")
    validate(config)  # the registry (or optim.groups_from_config) checks these keys when they are built
    assert set(config_lib.FREE_FORM_SECTIONS) == {"model", "method", "data.source", "data.augment",
                                                  "data.device_augment", "data.eval_augment", "evaluators",
                                                  "optimizer.groups"}


def test_a_recipe_with_a_misspelt_key_fails_to_load(tmp_path):
    recipe = tmp_path / "bad_recipe.py"
    recipe.write_text(
        "from vision_jax.config import default_config\n"
        "def get_config(arg=None):\n"
        "    c = default_config()\n"
        "    c.checkpoint.evry_steps = 10\n"
        "    return c\n")
    with pytest.raises(ValueError, match=r"'checkpoint\.evry_steps'\. Did you mean 'every_steps'"):
        load_config(str(recipe))


# ----------------------------------------------------------------------------------------------
# Registries
# ----------------------------------------------------------------------------------------------


def test_unknown_model_lists_known_models():
    with pytest.raises(ValueError, match=r"Unknown model 'resnett'\. Did you mean 'resnet'.*Known models: .*cnn.*resnet"):
        MODELS.build("resnett", {}, rngs=nnx.Rngs(0))


def test_unknown_model_option_suggests_the_right_one():
    with pytest.raises(ValueError, match=r"model 'cnn' has no option 'widht'\. Did you mean 'widths'"):
        MODELS.build("cnn", {"widht": 3}, rngs=nnx.Rngs(0))


def test_model_builds_with_config_options():
    model = MODELS.build("cnn", {"widths": (4, 8)}, rngs=nnx.Rngs(0))
    assert model.num_features == 8


def _setup():
    from vision_jax.methods.base import MethodSetup
    from vision_jax.schedules import RunLength

    return MethodSetup(lambda rngs: MODELS.build("cnn", {"widths": (4,)}, rngs=rngs), num_classes=10,
                       length=RunLength(total_steps=10, steps_per_epoch=5))


def test_method_registry_errors():
    with pytest.raises(ValueError, match=r"Unknown method 'simclrr'\. Did you mean 'simclr'.*Known methods: .*simclr, supervised"):
        METHODS.build("simclrr", {}, setup=_setup())
    with pytest.raises(ValueError, match=r"method 'simclr' has no option 'temprature'\. Did you mean 'temperature'"):
        METHODS.build("simclr", {"temprature": 0.1}, setup=_setup())
    # Framework-passed arguments are not options a config may set.
    with pytest.raises(ValueError, match=r"no option 'setup'"):
        METHODS.build("simclr", {"setup": 3}, setup=_setup())
    method = METHODS.build("simclr", {"temperature": 0.1}, setup=_setup())
    assert method.temperature == 0.1


def test_evaluator_registry_errors():
    with pytest.raises(ValueError, match=r"Unknown evaluator 'knnn'\. Did you mean 'knn'.*Known evaluators: .*linear_probe"):
        EVALUATORS.build("knnn", {})
    with pytest.raises(ValueError, match=r"evaluator 'linear_probe' has no option 'epoch'\. Did you mean 'epochs'"):
        EVALUATORS.build("linear_probe", {"epoch": 10})


def test_source_registry_errors():
    with pytest.raises(ValueError, match=r"Unknown data source 'digitz'\. Did you mean 'digits'.*Known data sources: arrays, digits, image_folder, tfds"):
        SOURCES.build("digitz", {}, split="train", image_size=8)
    with pytest.raises(ValueError, match=r"data source 'digits' has no option 'split_sed'\. Did you mean 'split_seed'"):
        SOURCES.build("digits", {"split_sed": 1}, split="train", image_size=8)
    with pytest.raises(ValueError, match=r"data source 'image_folder' needs option\(s\) root"):
        SOURCES.build("image_folder", {}, split="train", image_size=8)


def test_augmentation_registry_errors():
    with pytest.raises(ValueError, match=r"Unknown augmentation 'simclrr'\. Did you mean 'simclr'.*Known augmentations: .*crop_flip"):
        AUGMENTATIONS.build("simclrr")
    with pytest.raises(ValueError, match=r"augmentation 'simclr' has no option 'jiter_strength'\. Did you mean 'jitter_strength'"):
        AUGMENTATIONS.build("simclr", {"jiter_strength": 0.5})


def test_registering_a_name_twice_errors():
    with pytest.raises(ValueError, match=r"model 'cnn' is registered twice"):
        MODELS.register("cnn")(lambda: None)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def test_cli_rejects_a_misspelt_override(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "vision_jax.train", "--config=configs/simclr_digits.py:runlocal",
         f"--workdir={tmp_path / 'run'}", "--config.optimizer.lrr=0.1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "optimizer.lrr" in result.stderr
    assert "Did you mean 'lr'" in result.stderr
    assert "Traceback" not in result.stderr  # an input mistake is a message, not a stack trace
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())  # nothing was started


# ----------------------------------------------------------------------------------------------
# Values checked at load, recipe files with mistakes, options the recipe did not set, saved configs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("log_every=-1", r"config\.log_every=-1 must be >= 0 \(0: log only the last step\)\."),
    ("checkpoint.every_steps=-5", r"config\.checkpoint\.every_steps=-5 must be >= 0 \(0: save only at the end"),
    ("batch_size=0", r"config\.batch_size=0 must be at least 1\."),
    ("total_steps=-5", r"config\.total_steps=-5 must be at least 1\."),
    ("checkpoint.keep=0", r"config\.checkpoint\.keep=0 must be at least 1\."),
    ("data.eval_batch_size=0", r"config\.data\.eval_batch_size=0 must be at least 1\."),
    ("mesh.data=0", r"config\.mesh\.data=0 must be at least 1, or -1"),
    ("optimizer.lr=-0.1", r"config\.optimizer\.lr=-0\.1 must be >= 0"),
])
def test_values_are_checked_at_load(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(RECIPE, [override])


def test_zero_turns_intervals_off():
    config = load_config(RECIPE, ["log_every=0", "eval_every=0", "checkpoint.every_steps=0"])
    assert (config.log_every, config.eval_every, config.checkpoint.every_steps) == (0, 0, 0)


def test_a_recipe_with_a_syntax_error_names_file_line_and_error(tmp_path):
    recipe = tmp_path / "broken.py"
    recipe.write_text("from vision_jax.config import default_config\n\ndef get_config(arg=None):\n"
                      "    c = default_config(\n    return c\n")
    with pytest.raises(ValueError, match=rf"^Config file {recipe}, line 4: '\(' was never closed: c = default_config\($"):
        load_config(str(recipe))


def test_a_recipe_that_raises_names_its_line(tmp_path):
    recipe = tmp_path / "typo.py"
    recipe.write_text("from vision_jax.config import default_config\n\ndef get_config(arg=None):\n"
                      "    c = default_config()\n    c.total_steps = totl\n    return c\n")
    with pytest.raises(ValueError, match=rf"^Config file {recipe}, line 5: NameError: name 'totl' is not defined$"):
        load_config(str(recipe))


def test_options_the_recipe_did_not_set_are_added_and_checked_against_the_factory(capsys):
    config = load_config(RECIPE, ["model.name=resnet", "model.depth=18", "evaluators.knn.chunk=256"])
    assert config.model.to_dict() == {"name": "resnet", "depth": 18}  # the cnn's widths: dropped, with a note
    assert "note: model.name='resnet': dropped the recipe's model option(s) widths" in capsys.readouterr().err
    assert config.evaluators.knn.chunk == 256
    with pytest.raises(ValueError, match=r"--config\.model\.depht: model 'resnet' has no option 'depht'\. "
                                         r"Did you mean 'depth'"):
        load_config(RECIPE, ["model.name=resnet", "model.depht=18"])
    # An option set on the command line is never dropped silently, even after a name change.
    with pytest.raises(ValueError, match=r"model 'resnet' has no option 'widths'"):
        load_config(RECIPE, ["model.name=resnet", "model.widths=(8,16)"])
    with pytest.raises(ValueError, match=r"Unknown model 'resnett'\. Did you mean 'resnet'"):
        load_config(RECIPE, ["model.name=resnett"])


def test_a_saved_config_json_loads_as_the_config_that_was_saved(tmp_path):
    config = load_config(RECIPE + ":runlocal", ["model.widths=(8,16)", "optimizer.lr=0.5", "preemption_signal="])
    (tmp_path / "config.json").write_text(config_lib.to_json(config))
    loaded = load_config(str(tmp_path / "config.json"))
    assert loaded.to_dict() == config.to_dict() and loaded.model.widths == (8, 16)
    assert load_config(str(tmp_path / "config.json"), ["total_steps=7"]).total_steps == 7
    with pytest.raises(ValueError, match=r"takes no recipe arguments; drop ':runlocal'"):
        load_config(f"{tmp_path / 'config.json'}:runlocal")
