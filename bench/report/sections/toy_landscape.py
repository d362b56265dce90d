"""The "Toy landscape" section: trajectories recorded by the ``landscape`` architecture on a
dataset that provides its landscape and Pareto front (``toy2``), and where each ends."""

from __future__ import annotations

from bench.report import plots
from bench.report.document import Document
from bench.report.results import RunResults


def render(doc: Document, results: RunResults) -> None:
    toy = results.toy
    if toy is None or toy.trajectories.empty:
        return
    sec = doc.section("Toy landscape")
    doc.figure(sec, "toy-trajectories", plots.toy_trajectories(
        toy.trajectories, toy.grid, toy.pareto_points,
        "Trajectories over the average loss (gray dots: Pareto set)"),
        "Each method from every starting point (circle) to where it ends (cross), over the "
        "contours of (f1 + f2) / 2; the Pareto set is computed on a 300 x 300 grid.")
    display = toy.endpoints[["method", "start", "x1", "x2", "f1", "f2", "average loss",
                             "on Pareto set"]]
    doc.table(sec, "toy-endpoints", display.round(3),
              "Where each method ends: a point is off the Pareto set when some grid point "
              "is better on both objectives by more than 1% of the front's range.")
