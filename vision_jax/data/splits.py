"""Split strings in the tfds style, `name[start:stop]` with counts or percentages."""
from __future__ import annotations

import re

from vision_jax.errors import ConfigError

_SPLIT = re.compile(r"^(?P<name>[\w-]+)(\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")


def parse_split(split: str) -> tuple[str, str | None, str | None]:
    match = _SPLIT.match(split.replace(" ", ""))
    if not match:
        raise ConfigError(f"Split {split!r} is malformed; write e.g. 'train', 'train[:45000]' or 'train[80%:]'.")
    return match["name"], match["start"] or None, match["stop"] or None


def slice_bounds(split: str, num_examples: int) -> tuple[str, int, int]:
    """Returns (split name, start, stop) for a split string over `num_examples` examples."""
    name, start, stop = parse_split(split)

    def resolve(bound: str | None, default: int) -> int:
        if bound is None:
            return default
        value = (int(bound[:-1]) * num_examples) // 100 if bound.endswith("%") else int(bound)
        return max(0, min(num_examples, value + num_examples if value < 0 else value))

    begin, end = resolve(start, 0), resolve(stop, num_examples)
    if end <= begin:
        raise ConfigError(f"Split {split!r} selects no examples out of {num_examples}.")
    return name, begin, end
