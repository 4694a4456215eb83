"""Experiment trackers: a run's metric rows, sample grids, recipe, lineage and reports logged to W&B, MLflow or
TensorBoard, offline into the run folder. ``registry`` is the seam (``TRACKERS``), ``session`` the driver that
reads a run folder and logs what is new; one module per tracker."""
