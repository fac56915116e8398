"""Training command line: ``python -m training {train,evaluate,twin,gate,publish,promote,rollback,list}``.

It imports the core package (:mod:`lungscan`), never the Lambda. The layout table in docs/development.md lists the
modules: the entry point (:mod:`training.cli`), the dataset (:mod:`training.data.datasets` and the steps it
runs), the ``train`` run and its networks, evaluation and its card, the twin, the gate, publishing.
"""
