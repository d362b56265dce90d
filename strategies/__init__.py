"""Multi-task strategies: how tasks share parameters (``sharing``) and how their
losses or gradients are combined (``weighting``). One file per method."""
