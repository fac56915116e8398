"""Where the S3 model registry keeps things: the layout of the model bucket, and the name and
version checks every key goes through (a name and a version become S3 keys and local folders).

Layout in the model bucket::

    models/<name>/<version>/model.h5
    models/<name>/<version>/model.onnx      (the runtime twin, when model.json declares one)
    models/<name>/<version>/model.json
    models/<name>/<version>/report/*       (evaluation figures, smoke set; not needed to serve)
    models/<name>/<version>/MODEL_CARD.md
    models/<name>/history.json             -> [{"at", "action", "version", "previous"}, ...]
    models/<name>/latest.json              -> {"version": "<version>"}

Bundles are published and downloaded by :mod:`lungscan.registry.bundles`; the pointer and its history are
moved by :mod:`lungscan.registry.pointer`.
"""

from __future__ import annotations

import re

from lungscan.bundle.files import NAME_PATTERN, VERSION_PATTERN
from lungscan.errors import RegistryError

PREFIX = "models"
POINTER_FILE = "latest.json"
HISTORY_FILE = "history.json"


def check_name(name: object) -> str:
    """``name`` when it is a valid model name (it becomes an S3 key and a folder)."""
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise RegistryError("invalid model name: use lower-case letters, digits, '.', '_', '-' (at most 64)")
    return name


def check_version(version: object) -> str:
    """``version`` when it is a valid version (the pattern of model.json's version: never "." or "..")."""
    if not isinstance(version, str) or not re.fullmatch(VERSION_PATTERN, version):
        raise RegistryError("invalid version: use letters, digits, '.', '_', '-', starting with a letter or digit")
    return version


def pointer_key(name: str) -> str:
    return f"{PREFIX}/{check_name(name)}/{POINTER_FILE}"


def version_prefix(name: str, version: str) -> str:
    return f"{PREFIX}/{check_name(name)}/{check_version(version)}"


def history_key(name: str) -> str:
    return f"{PREFIX}/{check_name(name)}/{HISTORY_FILE}"
