"""Yeast: 14 gene-function classes (multi-label) from 103 expression/phylogenetic features.

Source: A. Elisseeff, J. Weston, "A kernel method for multi-labelled classification",
NeurIPS 2001; the MULAN version (G. Tsoumakas et al., JMLR 12, 2011; OpenML 40597) as
shipped by ``river==0.26.1`` (``river/datasets/yeast.csv.gz``): 2,417 genes, features
``Att1..Att103`` (floats), labels ``Class1..Class14`` (0/1).

Tasks: ``class1`` .. ``class14``, binary (float32 {0, 1}); every gene has all 14 labels.
The rarest, ``class14``, has 34 positives in all.

Inputs: the 103 features z-scored with the train split's mean and population std.

Splits: a seeded random 60/20/20 % split of the genes (1,450 / 483 / 484).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from bench.data import DATASETS, MTLDataset
from bench.data.cache import cached
from bench.data.common import (
    COMMON_FILE,
    DataSource,
    assemble_tabular,
    make_dataset,
    order_by_split,
    random_split,
    require,
    standardize,
)
from bench.tasks import Task

__all__ = ["FEATURES", "LABELS", "SOURCE", "TASKS", "read_raw", "yeast"]

# The data files this loader reads and what installs them (see bench.data.common).
SOURCE = DataSource(pip={"river==0.26.1": ["river/datasets/yeast.csv.gz"]})

FEATURES = tuple(f"Att{i}" for i in range(1, 104))
LABELS = tuple(f"Class{i}" for i in range(1, 15))
TASKS = tuple(Task(f"class{i}", "binary") for i in range(1, 15))


def read_raw() -> pd.DataFrame:
    """The packaged table (2,417 rows, 103 feature and 14 label columns)."""
    (path,) = require("yeast")
    return pd.read_csv(path)


def _build(seed: int) -> dict[str, torch.Tensor]:
    frame = read_raw()
    rows = random_split(len(frame), seed)
    x = standardize(frame[list(FEATURES)].to_numpy(np.float64), rows["train"])
    arrays = {"num": torch.from_numpy(x.astype(np.float32))}
    arrays.update({f"rows.{k}": torch.from_numpy(v.astype(np.int64)) for k, v in rows.items()})
    for label, task in zip(LABELS, TASKS, strict=True):
        arrays[f"y.{task.name}"] = torch.from_numpy(frame[label].to_numpy(np.float32))
    return order_by_split(arrays)


@DATASETS.register("yeast")
def yeast(*, split_seed: Annotated[int, Field(ge=0)] = 0) -> MTLDataset:
    """Yeast (Elisseeff & Weston 2001): 14 binary gene-function labels, 103 features."""
    arrays = cached(
        "yeast",
        {"split_seed": split_seed},
        sources=require("yeast"),
        code=[Path(__file__), COMMON_FILE],
        build=lambda: _build(split_seed),
    )
    return make_dataset("yeast", TASKS, assemble_tabular(arrays, TASKS))
