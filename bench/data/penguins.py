"""Palmer penguins: predict species, sex and body mass from bill, flipper and island.

Source: K. B. Gorman, T. D. Williams, W. R. Fraser, "Ecological sexual dimorphism
and environmental variability within a community of Antarctic penguins (genus
Pygoscelis)", PLoS ONE 9(3): e90081, 2014, https://doi.org/10.1371/journal.pone.0090081;
data as packaged by A. M. Horst, A. P. Hill, K. B. Gorman, "palmerpenguins"
(2020), https://doi.org/10.5281/zenodo.3960218 (Python package ``palmerpenguins``,
which ships the CSV, so loading works offline).

Rows with any missing value are dropped (333 of 344 remain). The rows are
shuffled with ``split_seed`` and split 60/20/20 % into train/val/test.

Inputs (6 columns, float32): bill_length_mm, bill_depth_mm, flipper_length_mm
standardised with the train split's mean and (population) std, then a one-hot
island in the order Biscoe, Dream, Torgersen. Body mass, species and sex are
never inputs.

Tasks: ``species`` (multiclass; Adelie=0, Chinstrap=1, Gentoo=2, int64), ``sex``
(binary; female=0, male=1, float32), ``body_mass`` (regression; body_mass_g
z-scored with train statistics, float32).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import pandas as pd
import torch
from palmerpenguins import load_penguins
from pydantic import Field

from bench.data import DATASETS, MTLDataset, Split
from bench.tasks import Task

__all__ = ["FEATURES", "ISLANDS", "SPECIES", "load_frame", "penguins", "split_indices"]

FEATURES = ("bill_length_mm", "bill_depth_mm", "flipper_length_mm")
ISLANDS = ("Biscoe", "Dream", "Torgersen")
SPECIES = ("Adelie", "Chinstrap", "Gentoo")
_FRACTIONS = (0.6, 0.2)  # train, val; test gets the rest


def load_frame() -> pd.DataFrame:
    """The packaged table without rows that have missing values (333 rows), index reset."""
    return load_penguins().dropna().reset_index(drop=True)


def split_indices(split_seed: int, num_rows: int) -> dict[str, np.ndarray]:
    """Disjoint row indices of the train/val/test splits."""
    order = np.random.default_rng(split_seed).permutation(num_rows)
    n_train = round(_FRACTIONS[0] * num_rows)
    n_val = round(_FRACTIONS[1] * num_rows)
    return {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }


@DATASETS.register("penguins")
def penguins(*, split_seed: Annotated[int, Field(ge=0)] = 0) -> MTLDataset:
    """Palmer penguins: species (3-class), sex (binary), body mass (regression)."""
    frame = load_frame()
    features = frame[list(FEATURES)].to_numpy(dtype=np.float64)
    islands = np.stack([(frame["island"] == i).to_numpy() for i in ISLANDS], axis=1)
    species = frame["species"].map({s: i for i, s in enumerate(SPECIES)}).to_numpy(np.int64)
    sex = frame["sex"].map({"female": 0.0, "male": 1.0}).to_numpy(np.float64)
    mass = frame["body_mass_g"].to_numpy(dtype=np.float64)

    idx = split_indices(split_seed, len(frame))
    train = idx["train"]
    f_mean, f_std = features[train].mean(axis=0), features[train].std(axis=0)
    m_mean, m_std = mass[train].mean(), mass[train].std()

    def make(rows: np.ndarray) -> Split:
        x = np.concatenate([(features[rows] - f_mean) / f_std, islands[rows]], axis=1)
        return Split(
            torch.from_numpy(x.astype(np.float32)),
            {
                "species": torch.from_numpy(species[rows]),
                "sex": torch.from_numpy(sex[rows].astype(np.float32)),
                "body_mass": torch.from_numpy(((mass[rows] - m_mean) / m_std).astype(np.float32)),
            },
        )

    return MTLDataset(
        name="penguins",
        tasks=(
            Task("species", "multiclass", 3),
            Task("sex", "binary"),
            Task("body_mass", "regression"),
        ),
        train=make(train),
        val=make(idx["val"]),
        test=make(idx["test"]),
    )
