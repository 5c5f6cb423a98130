"""The test session's process compiles into the same persistent cache as the training subprocesses
it starts (helpers.COMPILATION_CACHE_DIR): the many small in-process runs of one program compile it
once."""
import jax
from helpers import CACHE_MIN_COMPILE_SECONDS, COMPILATION_CACHE_DIR

jax.config.update("jax_compilation_cache_dir", COMPILATION_CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", float(CACHE_MIN_COMPILE_SECONDS))
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
