"""Training command line: ``python -m training {train,evaluate,publish,promote,rollback,list}``.

It imports the core package (:mod:`lungscan`), never the Lambda. Modules: :mod:`training.cli`
(the entry point), :mod:`training.datasets` (scan, deduplicate, split), :mod:`training.train`,
:mod:`training.evaluate`, :mod:`training.metrics`, :mod:`training.model_card`,
:mod:`training.publish` (registry commands), :mod:`training.presets` (the shipped models' recipes).
"""
