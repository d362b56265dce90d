"""QM9: 11 quantum-chemical regression targets of small organic molecules (Nash-MTL protocol).

Source: R. Ramakrishnan, P. O. Dral, M. Rupp, O. A. von Lilienfeld, "Quantum chemistry
structures and properties of 134 kilo molecules", Scientific Data 1, 140022 (2014),
https://doi.org/10.1038/sdata.2014.22, as shipped by ``qm9pack==1.0.3``
(``qm9pack/data/qm9_part{1,2,3}.csv``): the 130,831 molecules that remain after removing
the 3,054 that failed the consistency check, i.e. the molecules of PyTorch Geometric's
``QM9``, with B3LYP/6-31G(2df,p) properties and atom coordinates (Angstrom).

Tasks (regression, float32), as in A. Navon et al., "Multi-Task Learning as a Bargaining
Game" (Nash-MTL), ICML 2022 (code: ``experiments/quantum_chemistry``, PyG target indices
0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11), also used by FAMO (Liu et al., NeurIPS 2023):
``mu`` (D), ``alpha`` (a0^3), ``homo``, ``lumo`` (eV), ``r2`` (a0^2), ``zpve`` (eV),
``U0``, ``U``, ``H``, ``G`` (atomization energies at 0 K / 298.15 K in eV: the total
energy minus the B3LYP energies of the free atoms, as PyG's ``U0_atom`` etc.), ``cv``
(cal/mol K). Hartree values are converted with 1 Ha = 27.211386246 eV (PyG's factor).
The HOMO-LUMO ``gap`` is left out, as in Nash-MTL (it is exactly ``lumo - homo``);
``with_gap=True`` adds it as a 12th task. Each target is z-scored with the train
split's mean and population std (Nash-MTL scales targets the same way; its reported MAEs
are in the units above, meV for the energies).

Inputs (34 float32 features, z-scored with train statistics): the eigenvalue spectrum of
the Coulomb matrix (M. Rupp et al., "Fast and Accurate Modeling of Molecular Atomization
Energies with Machine Learning", PRL 108, 058301, 2012) computed from the coordinates
(in Bohr), ``C_ii = Z_i^2.4 / 2``, ``C_ij = Z_i Z_j / |R_i - R_j|``: 29 eigenvalues (the
largest molecule has 29 atoms; padding gives zeros) sorted by decreasing magnitude, then
the number of H, C, N, O and F atoms. The spectrum is invariant to translation,
rotation and atom order and needs only numpy, unlike graph featurisations (RDKit). Never
inputs: any computed property (charges, frequencies, rotational constants, the targets).

Splits as Nash-MTL: a seeded permutation of the molecules; test = the first 10,000, val
= the next 10,000, train = the remaining 110,831. ``num_molecules`` subsamples (seeded)
for speed; val and test then keep Nash-MTL's proportion (each ``round(10000 * n /
130831)`` molecules).
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
    require,
    standardize,
)
from bench.tasks import Task

__all__ = [
    "ATOMREF",
    "ELEMENTS",
    "NUM_MOLECULES",
    "SOURCE",
    "TARGETS",
    "coulomb_spectrum",
    "qm9",
    "read_molecules",
    "split_rows",
    "targets",
]

# The data files this loader reads and what installs them (see bench.data.common).
SOURCE = DataSource(pip={"qm9pack==1.0.3": [f"qm9pack/data/qm9_part{i}.csv" for i in (1, 2, 3)]})

NUM_MOLECULES = 130_831
MAX_ATOMS = 29
HARTREE_EV = 27.211386246
ANGSTROM_BOHR = 1.0 / 0.529177210903
ELEMENTS = ("H", "C", "N", "O", "F")
CHARGE = {"H": 1.0, "C": 6.0, "N": 7.0, "O": 8.0, "F": 9.0}
# B3LYP/6-31G(2df,p) energies (Hartree) of the free atoms, for U0, U, H, G (QM9 atomref).
ATOMREF = {
    "H": (-0.500273, -0.498857, -0.497912, -0.510927),
    "C": (-37.846772, -37.845355, -37.844411, -37.861317),
    "N": (-54.583861, -54.582445, -54.581501, -54.598897),
    "O": (-75.064579, -75.063163, -75.062219, -75.079532),
    "F": (-99.718730, -99.717314, -99.716370, -99.733544),
}
# task -> (CSV column, scale to the reported unit, atomref column or None)
TARGETS: dict[str, tuple[str, float, int | None]] = {
    "mu": ("Dipole_debye", 1.0, None),
    "alpha": ("Polarizability_bohr3", 1.0, None),
    "homo": ("HOMO_au", HARTREE_EV, None),
    "lumo": ("LUMO_au", HARTREE_EV, None),
    "r2": ("R2_bohr2", 1.0, None),
    "zpve": ("ZPVE_au", HARTREE_EV, None),
    "U0": ("InternalEnergy_0K_au", HARTREE_EV, 0),
    "U": ("InternalEnergy_298K_au", HARTREE_EV, 1),
    "H": ("Enthalphy_298K_au", HARTREE_EV, 2),
    "G": ("GibbsFreeEnergy_298K_au", HARTREE_EV, 3),
    "cv": ("Heatcapacity_Cv_cal_mol_K", 1.0, None),
    "gap": ("HOMO_LUMO_gap_au", HARTREE_EV, None),
}
_STRUCTURE = ("Index", "N_atoms", "Elements", "XYZ_Ang")


def read_molecules() -> pd.DataFrame:
    """The packaged table: structure columns (strings) and the raw target columns."""
    usecols = list(_STRUCTURE) + [col for col, _, _ in TARGETS.values()]
    frames = [
        pd.read_csv(p, usecols=usecols, dtype={"Elements": object, "XYZ_Ang": object})
        for p in require("qm9")
    ]
    return pd.concat(frames, ignore_index=True)


def split_rows(num_molecules: int | None, seed: int) -> dict[str, np.ndarray]:
    """Molecule rows of each split (Nash-MTL: test first, then val, train the rest)."""
    n = num_molecules or NUM_MOLECULES
    order = np.random.default_rng(seed).permutation(NUM_MOLECULES)[:n]
    k = round(10_000 * n / NUM_MOLECULES)
    return {"train": order[2 * k :], "val": order[k : 2 * k], "test": order[:k]}


def _parse(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Padded charges ``(M, 29)`` and coordinates in Bohr ``(M, 29, 3)`` of ``frame``'s rows."""
    counts = frame["N_atoms"].to_numpy(np.int64)
    text = ",".join(frame["XYZ_Ang"].tolist()).replace("[", "").replace("]", "")
    xyz = np.array(text.split(","), dtype=np.float64).reshape(-1, 3)
    symbols = ",".join(frame["Elements"].tolist())
    symbols = symbols.replace("[", "").replace("]", "").replace("'", "").replace(" ", "")
    z = np.array([CHARGE[s] for s in symbols.split(",")], dtype=np.float64)
    if len(z) != counts.sum() or len(xyz) != counts.sum():
        raise ValueError("qm9: atom counts do not match the element and coordinate lists")
    m = len(counts)
    mol = np.repeat(np.arange(m), counts)
    pos = np.arange(len(z)) - np.repeat(np.cumsum(counts) - counts, counts)
    charges = np.zeros((m, MAX_ATOMS))
    coords = np.zeros((m, MAX_ATOMS, 3))
    charges[mol, pos] = z
    coords[mol, pos] = xyz * ANGSTROM_BOHR
    return charges, coords


def coulomb_spectrum(charges: np.ndarray, coords: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Coulomb-matrix eigenvalues ``(M, 29)`` sorted by decreasing magnitude.

    ``charges`` ``(M, 29)`` (0 for padding), ``coords`` ``(M, 29, 3)`` in Bohr.
    """
    out = np.empty(charges.shape)
    for a in range(0, len(charges), chunk):
        z = charges[a : a + chunk]
        r = coords[a : a + chunk]
        dist = np.sqrt(((r[:, :, None, :] - r[:, None, :, :]) ** 2).sum(-1))
        zz = z[:, :, None] * z[:, None, :]
        cm = np.divide(zz, dist, out=np.zeros_like(zz), where=(zz > 0) & (dist > 0))
        diag = np.arange(z.shape[1])
        cm[:, diag, diag] = 0.5 * z**2.4
        eig = np.linalg.eigvalsh(cm)
        order = np.argsort(-np.abs(eig), axis=1, kind="stable")
        out[a : a + chunk] = np.take_along_axis(eig, order, axis=1)
    return out


def targets(frame: pd.DataFrame, charges: np.ndarray, names: list[str]) -> np.ndarray:
    """Raw targets ``(M, len(names))`` in the reported units (see the module docstring)."""
    counts = np.stack([(charges == CHARGE[e]).sum(1) for e in ELEMENTS], axis=1)
    ref = np.array([ATOMREF[e] for e in ELEMENTS])  # (5, 4)
    atoms = counts @ ref  # (M, 4): energy of the free atoms
    cols = []
    for name in names:
        column, scale, ref_col = TARGETS[name]
        value = frame[column].to_numpy(np.float64)
        if ref_col is not None:
            value = value - atoms[:, ref_col]
        cols.append(value * scale)
    return np.stack(cols, axis=1)


def features(charges: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Unscaled inputs ``(M, 34)``: Coulomb spectrum, then counts of H, C, N, O, F."""
    counts = np.stack([(charges == CHARGE[e]).sum(1) for e in ELEMENTS], axis=1)
    return np.concatenate([coulomb_spectrum(charges, coords), counts], axis=1)


def _build(num_molecules: int | None, with_gap: bool, seed: int) -> dict[str, torch.Tensor]:
    rows = split_rows(num_molecules, seed)
    chosen = np.sort(np.concatenate(list(rows.values())))
    frame = read_molecules().iloc[chosen].reset_index(drop=True)
    position = np.full(NUM_MOLECULES, -1, dtype=np.int64)
    position[chosen] = np.arange(len(chosen))
    local = {k: position[v] for k, v in rows.items()}
    charges, coords = _parse(frame)
    names = _task_names(with_gap)
    y = standardize(targets(frame, charges, names), local["train"])
    x = standardize(features(charges, coords), local["train"])
    arrays = {
        "num": torch.from_numpy(x.astype(np.float32)),
        "index": torch.from_numpy(frame["Index"].to_numpy(np.int64).copy()),
    }
    arrays.update({f"rows.{k}": torch.from_numpy(v) for k, v in local.items()})
    arrays.update(
        {f"y.{t}": torch.from_numpy(y[:, i].astype(np.float32)) for i, t in enumerate(names)}
    )
    return order_by_split(arrays)


def _task_names(with_gap: bool) -> list[str]:
    return [t for t in TARGETS if t != "gap"] + (["gap"] if with_gap else [])


@DATASETS.register("qm9")
def qm9(
    *,
    num_molecules: Annotated[int, Field(ge=100, le=NUM_MOLECULES)] | None = None,
    with_gap: bool = False,
    split_seed: Annotated[int, Field(ge=0)] = 0,
) -> MTLDataset:
    """QM9: Nash-MTL's 11 regression targets from a Coulomb-matrix spectrum and atom counts."""
    params = {"num_molecules": num_molecules, "with_gap": with_gap, "split_seed": split_seed}
    arrays = cached(
        "qm9",
        params,
        sources=require("qm9"),
        code=[Path(__file__), COMMON_FILE],
        build=lambda: _build(num_molecules, with_gap, split_seed),
    )
    tasks = tuple(Task(t, "regression") for t in _task_names(with_gap))
    return make_dataset("qm9", tasks, assemble_tabular(arrays, tasks))
