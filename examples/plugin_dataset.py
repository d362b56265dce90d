"""A dataset plugin: two tasks on one synthetic table, registered as ``my_table``."""

from typing import Annotated

import torch
from pydantic import Field

from bench.data import DATASETS, MTLDataset, Split
from bench.tasks import Task


@DATASETS.register("my_table")
def my_table(*, num_samples: Annotated[int, Field(ge=50, le=100_000)] = 1000,
             seed: Annotated[int, Field(ge=0)] = 0) -> MTLDataset:
    """Price (regression) and sold (binary) of items described by 6 features."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, 6, generator=g)
    price = 2 * x[:, 0] + x[:, 1] ** 2 + 0.1 * torch.randn(num_samples, generator=g)
    sold = (x[:, 2] - x[:, 0] > 0).float()  # a label per task, named as the task
    n_train, n_val = num_samples * 6 // 10, num_samples * 2 // 10

    def split(rows: slice) -> Split:
        return Split(x[rows], {"price": price[rows], "sold": sold[rows]})

    return MTLDataset(
        "my_table",
        (Task("price", "regression"), Task("sold", "binary")),
        split(slice(0, n_train)),
        split(slice(n_train, n_train + n_val)),
        split(slice(n_train + n_val, None)),
    )
