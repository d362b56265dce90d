"""Hyperparameters of every built-in strategy: the defaults of the papers / official code
that ``WEIGHTING.resolve`` fills in, the invalid values it rejects, and the checks of
per-task vectors against the number of tasks.

(Moved from the four weighting family files.)"""

from __future__ import annotations

import pytest
import torch

from bench.errors import ConfigError
from strategies.weighting import WEIGHTING, get
from unit.weighting._inputs import (
    DEVICES,
    direction,
    make,
    random_jacobian,
)


def test_resolve_fills_defaults_ew_uw_dwa_mgda_pcgrad():
    assert WEIGHTING.resolve("ew", {}) == {}
    assert WEIGHTING.resolve("uw", {}) == {}
    assert WEIGHTING.resolve("pcgrad", {}) == {}
    assert WEIGHTING.resolve("dwa", {}) == {"temperature": 2.0}
    assert WEIGHTING.resolve("dwa", {"temperature": 0.5}) == {"temperature": 0.5}
    assert WEIGHTING.resolve("mgda", {"normalization": "l2"}) == {
        "solver": "active_set",
        "normalization": "l2",
        "max_iter": 250,
        "tol": 1e-8,
        "away_steps": False,
    }
    assert get("dwa", temperature=3.0).temperature == 3.0


def test_resolve_fills_defaults_loss_based_methods():
    assert WEIGHTING.resolve("ls", {}) == {"weights": None}
    for name in ["si", "gls", "rlw"]:
        assert WEIGHTING.resolve(name, {}) == {}
    assert WEIGHTING.resolve("stch", {}) == {"mu": 1.0, "warmup_epoch": 4, "preference": None}
    assert WEIGHTING.resolve("famo", {}) == {"gamma": 0.01, "w_lr": 0.025, "min_losses": None}
    assert WEIGHTING.resolve("db_mtl", {}) == {"beta": 0.9, "beta_sigma": 0.0}
    assert WEIGHTING.resolve("gradnorm", {}) == {"alpha": 1.5, "lr": 1e-3}
    # A TOML list (or a replayed JSON array) becomes a tuple; integers become floats.
    assert WEIGHTING.resolve("ls", {"weights": [1, 2.5]}) == {"weights": (1.0, 2.5)}
    assert WEIGHTING.resolve("stch", {"preference": [0.5, 0.5]})["preference"] == (0.5, 0.5)


def test_resolve_fills_paper_defaults_gramian_methods():
    assert WEIGHTING.resolve("mgda", {})["solver"] == "active_set"
    assert WEIGHTING.resolve("upgrad", {}) == {"pref_vector": None, "norm_eps": 1e-4,
                                               "reg_eps": 1e-4}
    assert WEIGHTING.resolve("dualproj", {}) == {"pref_vector": None, "norm_eps": 1e-4,
                                                 "reg_eps": 1e-4}
    assert WEIGHTING.resolve("imtl_g", {}) == {}
    assert WEIGHTING.resolve("imtl", {}) == {}
    assert WEIGHTING.resolve("cagrad", {}) == {"c": 0.5, "rescale": 1, "norm_eps": 1e-4}
    assert WEIGHTING.resolve("nash_mtl", {}) == {
        "update_weights_every": 1, "optim_niter": 20, "max_norm": 1.0, "solver": "official",
    }
    assert WEIGHTING.resolve("aligned_mtl", {}) == {"scale_mode": "min", "pref_vector": None}
    assert WEIGHTING.resolve("config", {}) == {"pref_vector": None}
    assert WEIGHTING.resolve("upgrad", {"pref_vector": [1.0, 2]})["pref_vector"] == [1.0, 2.0]


def test_defaults_follow_the_papers_and_official_code_stateful_methods():
    assert WEIGHTING.resolve("graddrop", {}) == {"leak": 0.0}
    assert WEIGHTING.resolve("gradvac", {}) == {"beta": 0.5}  # LibMTL's and torchjd's
    assert WEIGHTING.resolve("moco", {}) == {
        "variant": "authors", "beta": None, "beta_sigma": None, "gamma": None,
        "gamma_sigma": None, "rho": None,
    }
    authors, libmtl = get("moco"), get("moco", variant="libmtl")
    steps = ("beta", "beta_sigma", "gamma", "gamma_sigma", "rho")
    assert [getattr(authors, k) for k in steps] == [0.1, 0.0, 0.1, 0.0, 0.1]
    assert [getattr(libmtl, k) for k in steps] == [0.5, 0.5, 0.1, 0.5, 0.0]
    assert get("moco", variant="libmtl", rho=0.2).rho == 0.2
    assert WEIGHTING.resolve("fairgrad", {}) == {"alpha": 1.0, "max_iter": None}
    assert WEIGHTING.resolve("excess_mtl", {}) == {"robust_step_size": 1e-2}
    assert WEIGHTING.resolve("sdmgrad", {}) == {
        "lamda": 0.3, "niter": 20, "beta": 10.0, "momentum": 0.5
    }
    assert WEIGHTING.resolve("modo", {}) == {"gamma": 0.1, "rho": 0.1}


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("dwa", {"temperature": -1.0}),
        ("dwa", {"temperature": 0.0}),
        ("dwa", {"temperature": "2"}),
        ("dwa", {"temprature": 2.0}),
        ("uw", {"lr": 0.1}),
        ("ew", {"scale": 1.0}),
        ("mgda", {"normalization": "l1"}),
        ("mgda", {"max_iter": 0}),
        ("mgda", {"max_iter": 2.5}),
        ("mgda", {"tol": -1e-3}),
        ("mgda", {"solver": "cvxpy"}),
        ("pcgrad", {"seed": 1}),
    ],
)
def test_bad_hyperparameters_raise_config_error_ew_uw_dwa_mgda_pcgrad(name, params):
    with pytest.raises(ConfigError):
        WEIGHTING.resolve(name, params)
    with pytest.raises(ConfigError):
        get(name, **params)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("cagrad", {"c": -0.1}),
        ("cagrad", {"rescale": 3}),
        ("cagrad", {"alpha": 0.5}),
        ("nash_mtl", {"optim_niter": 0}),
        ("nash_mtl", {"update_weights_every": 1.5}),
        ("nash_mtl", {"max_norm": -1.0}),
        ("nash_mtl", {"solver": "cvxpy"}),
        ("aligned_mtl", {"scale_mode": "max"}),
        ("upgrad", {"pref_vector": "mean"}),
        ("upgrad", {"reg_eps": -1e-4}),
        ("dualproj", {"norm_eps": -1.0}),
        ("config", {"pref_vector": [1, "a"]}),
        ("imtl_g", {"c": 1.0}),
    ],
)
def test_bad_hyperparameters_raise_config_error_gramian_methods(name, params):
    with pytest.raises(ConfigError):
        WEIGHTING.resolve(name, params)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("ls", {"weights": [-1.0, 1.0]}),
        ("ls", {"weights": ["1.0"]}),
        ("ls", {"weights": [True]}),
        ("ls", {"weights": []}),
        ("ls", {"weights": [float("inf")]}),
        ("ls", {"weights": "1,2"}),
        ("si", {"eps": 1e-8}),
        ("gls", {"weights": [1.0]}),
        ("rlw", {"dist": "Normal"}),
        ("stch", {"mu": 0.0}),
        ("stch", {"mu": -1.0}),
        ("stch", {"warmup_epoch": -1}),
        ("stch", {"warmup_epoch": 1.5}),
        ("stch", {"preference": [-0.5]}),
        ("famo", {"gamma": -0.1}),
        ("famo", {"w_lr": 0.0}),
        ("famo", {"max_norm": 1.0}),
        ("db_mtl", {"beta": 1.5}),
        ("db_mtl", {"beta_sigma": -1.0}),
        ("gradnorm", {"alpha": -1.0}),
        ("gradnorm", {"lr": 0.0}),
        ("gradnorm", {"lr": "0.1"}),
    ],
)
def test_bad_hyperparameters_raise_config_error_loss_based_methods(name, params):
    with pytest.raises(ConfigError):
        WEIGHTING.resolve(name, params)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("graddrop", {"leak": 1.5}),
        ("graddrop", {"leak": -0.1}),
        ("gradvac", {"beta": 2.0}),
        ("gradvac", {"group": "layer"}),
        ("moco", {"beta": 0.0}),
        ("moco", {"gamma_sigma": -1.0}),
        ("moco", {"variant": "paper"}),
        ("fairgrad", {"alpha": -1.0}),
        ("fairgrad", {"max_iter": 0}),
        ("fairgrad", {"alpha": "1"}),
        ("excess_mtl", {"robust_step_size": 0.0}),
        ("sdmgrad", {"niter": 0}),
        ("sdmgrad", {"momentum": 1.0}),
        ("sdmgrad", {"lambda": 0.3}),
        ("modo", {"gamma": 0.0}),
        ("modo", {"rho": -0.1}),
    ],
)
def test_bad_hyperparameters_raise_config_error_stateful_methods(name, params):
    with pytest.raises(ConfigError):
        WEIGHTING.resolve(name, params)


def test_pref_vector_of_the_wrong_length_raises():
    jac = random_jacobian(3, 5, 0)
    for name in ["upgrad", "dualproj", "aligned_mtl", "config"]:
        with pytest.raises(ValueError, match="pref_vector has 2 entries for 3 tasks"):
            direction(name, jac, pref_vector=[1.0, 2.0])


@pytest.mark.parametrize("device", DEVICES)
def test_weight_vectors_must_match_the_number_of_tasks(device):
    with pytest.raises(ValueError, match="ls: weights has 2 entries but there are 3 tasks"):
        make("ls", 3, device, weights=(1.0, 2.0))
    with pytest.raises(ValueError, match="stch: preference has 1 entries but there are 2"):
        make("stch", 2, device, preference=(1.0,))
    for name in ["ls", "stch", "famo", "rlw"]:
        with pytest.raises(RuntimeError, match="reset"):
            get(name).combine(torch.ones(2, device=device))
