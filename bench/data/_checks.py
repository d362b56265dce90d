"""What a loader returns is checked once, when it loads: a label named unlike its task
(a plugin's typo) is a one-line ConfigError then, not a KeyError mid-sweep."""

from __future__ import annotations

from typing import Any

from bench.data.registry import DATASETS
from bench.data.types import MTLDataset, MultiInputDataset
from bench.errors import ConfigError

__all__ = ["check_dataset"]


def _names(names: Any) -> str:
    return ", ".join(f"'{n}'" for n in sorted(names, key=str))


def check_dataset(name: str, dataset: Any) -> None:
    """Raise ``ConfigError`` unless ``dataset`` is an ``MTLDataset`` (or a
    ``MultiInputDataset``, which checks itself) whose every split holds exactly one label
    tensor per declared task, one label per input row."""

    where = DATASETS.describe(name)
    if isinstance(dataset, MultiInputDataset):
        return
    if not isinstance(dataset, MTLDataset):
        raise ConfigError(f"{where}: the loader must return an MTLDataset or a "
                          f"MultiInputDataset (got {type(dataset).__name__})")
    tasks = [t.name for t in dataset.tasks]
    for split in ("train", "val", "test"):
        s = getattr(dataset, split)
        missing = [t for t in tasks if t not in s.y]
        extra = [k for k in s.y if k not in tasks]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"no labels for task(s) {_names(missing)}")
            if extra:
                parts.append(f"labels {_names(extra)} belong to no task")
            raise ConfigError(f"{where}: split '{split}': {'; '.join(parts)} "
                              f"(tasks: {_names(tasks)})")
        for task, labels in s.y.items():
            if len(labels) != len(s.x):
                raise ConfigError(f"{where}: split '{split}': task '{task}' has "
                                  f"{len(labels)} labels for {len(s.x)} inputs")
