"""Errors whose message suggests a fix: the suggestion, typed as written, works. (The advice of a
refused resume, a held lock and a diverged or preempted run is followed in test_workdir.py,
test_checkpoint_safety.py and test_resume.py.)"""
import re
import shlex
import subprocess
import types

import numpy as np
import pytest
from test_data import folder_with_bad_files  # noqa: F401 - a fixture

from vision_jax import config as config_lib
from vision_jax import parallel
from vision_jax.data import show_views, sources
from vision_jax.errors import ConfigError, DataError

RECIPE = "configs/supervised_digits.py"


def suggested_overrides(message: str) -> list[str]:
    """The `--config.field=value` words of a message, as load_config takes them."""
    return [word.removeprefix("--config.").rstrip(",.;)") for word in message.split() if word.startswith("--config.")]


def test_too_many_bad_images_advice_adds_the_option_the_recipe_did_not_set(folder_with_bad_files):  # noqa: F811
    root, _ = folder_with_bad_files  # 2 of 10 images cannot be decoded
    overrides = ["data.source.name=image_folder", f"data.source.root={root}", "data.train_split=train"]
    config = config_lib.load_config(RECIPE, overrides)
    with pytest.raises(DataError) as error:
        sources.build_source(config.data.source, config.data.train_split, config.data.image_size)
    advice = suggested_overrides(str(error.value))
    assert len(advice) == 1 and advice[0].startswith("data.source.max_bad_fraction=")
    config = config_lib.load_config(RECIPE, [*overrides, *advice])
    with pytest.warns(UserWarning, match="Skipping 2 unreadable image"):
        source = sources.build_source(config.data.source, config.data.train_split, config.data.image_size)
    assert source.num_examples == 8


@pytest.mark.parametrize("mesh, devices", [(dict(data=-1, model=2), 3), (dict(data=4, model=1), 3),
                                           (dict(data=-1, model=4), 6)])
def test_a_mesh_that_does_not_fit_the_devices_gets_a_setting_that_does(mesh, devices):
    config = config_lib.load_config(RECIPE, [f"mesh.{axis}={size}" for axis, size in mesh.items()])
    with pytest.raises(ConfigError) as error:
        parallel.mesh_shape(config.mesh, devices)
    config = config_lib.load_config(RECIPE, [*[f"mesh.{a}={s}" for a, s in mesh.items()],
                                             *suggested_overrides(str(error.value))])
    data, model = parallel.mesh_shape(config.mesh, devices)
    assert data * model == devices


def test_a_batch_the_devices_do_not_divide_gets_one_they_do():
    mesh = types.SimpleNamespace(shape={"data": 8})
    with pytest.raises(ConfigError) as error:
        parallel.check_batch_size(60, mesh)
    config = config_lib.load_config(RECIPE, ["batch_size=60", *suggested_overrides(str(error.value))])
    parallel.check_batch_size(config.batch_size, mesh)
    assert config.batch_size == 56


def test_an_unknown_preemption_signal_gets_a_name_that_loads():
    with pytest.raises(ConfigError) as error:
        config_lib.load_config(RECIPE, ["preemption_signal=USR1"])
    advice = suggested_overrides(str(error.value))
    assert config_lib.load_config(RECIPE, advice).preemption_signal == "SIGUSR1"
    assert config_lib.load_config(RECIPE, ["preemption_signal="]).preemption_signal == ""  # '' as a shell passes it


def test_one_hot_labels_in_an_npz_get_the_fix_that_works(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    labels = np.eye(4, dtype=np.uint8)[np.arange(20) % 4]
    np.savez(tmp_path / "data.npz", images=images, labels=labels)
    with pytest.raises(DataError, match=r"labels have shape \(20, 4\): one-hot .* save labels\.argmax\(axis=1\) "
                                        r"instead"):
        sources.arrays(str(tmp_path / "data.npz"), "train", image_size=8)
    np.savez(tmp_path / "data.npz", images=images, labels=labels.argmax(axis=1))
    assert sources.arrays(str(tmp_path / "data.npz"), "train", image_size=8).num_classes == 4


def test_a_truncated_zip_is_named_as_such(tmp_path):
    archive = tmp_path / "images.zip"
    archive.write_bytes(b"PK\x03\x04" + b"\x00" * 100)  # a local header, then nothing: no central directory
    with pytest.raises(DataError, match=r"images\.zip' is not a valid zip archive \(truncated or corrupt\?\)"):
        sources.image_folder(str(archive), "train", image_size=8)


def test_show_views_into_a_missing_folder_says_which_command_creates_it(tmp_path, capsys):
    out = tmp_path / "new folder" / "views.png"
    arguments = [f"--config={RECIPE}", f"--out={out}", "--num_images=2"]
    with pytest.raises(SystemExit):
        show_views.main(arguments)
    command = re.search(r"\((mkdir -p .+?)\)", capsys.readouterr().err).group(1)
    subprocess.run(["bash", "-c", command], check=True)
    show_views.main(arguments)
    assert out.stat().st_size > 0
    assert shlex.split(command)[-1] == str(out.parent)
