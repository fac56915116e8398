"""The model bundle: a folder holding ``model.h5`` and the ``model.json`` that says how to use it.

:mod:`~lungscan.bundle.files` names every file of a bundle, :mod:`~lungscan.bundle.metadata` types
``model.json``, and :mod:`~lungscan.bundle.store` is the only code that reads and writes it.
"""
