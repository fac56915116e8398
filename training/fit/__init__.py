"""Fitting a model: the run, its options, the networks, the HOG front end."""
