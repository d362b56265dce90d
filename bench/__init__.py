"""mtlbench: a benchmarking and ablation harness for multi-task learning.

The pipeline, one module per stage: ``config`` -> ``grid`` -> ``executor`` ->
``trial`` -> ``store`` -> ``analysis`` -> ``report``.
"""

__version__ = "0.1.0"
