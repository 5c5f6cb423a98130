"""The test session's process compiles into the same persistent cache as the training subprocesses
it starts (helpers.COMPILATION_CACHE_DIR): the many small in-process runs of one program compile it
once. Each test's other caches (image_folder's listings) go to a temporary folder of its own."""
import jax
import pytest
from helpers import CACHE_MIN_COMPILE_SECONDS, COMPILATION_CACHE_DIR

jax.config.update("jax_compilation_cache_dir", COMPILATION_CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", float(CACHE_MIN_COMPILE_SECONDS))
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(autouse=True)
def _caches_in_tmp(tmp_path_factory, monkeypatch):
    """XDG_CACHE_HOME in a fresh temporary folder (for the test and the subprocesses it starts): no
    test writes image listings into ~/.cache, none reads another test's, and none lands in the
    test's own tmp_path, where it would look like data."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))


# CI's two pytest-xdist workers take whole files in collection order (`--dist loadfile`): the files
# that hold the longest end-to-end tests go first, so that no worker starts one of them while the
# other is about to finish. Longest first, by their durations on 2 cores; the rest keep their order.
LONGEST_FILES_FIRST = ("test_teacher_student.py", "test_notebooks.py", "test_launch.py", "test_checkpoint_safety.py",
                       "test_sharding.py", "test_resume.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FILES_FIRST.index(name) if name in LONGEST_FILES_FIRST else len(LONGEST_FILES_FIRST)

    items.sort(key=rank)  # a stable sort: each file's tests keep their order
