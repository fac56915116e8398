"""Which models a running function serves, and keeping them fresh.

A ``ModelStore`` starts from the bundle baked into the image (the fallback), then asks
the S3 registry for the latest published version of each served name; later it asks
again every ``refresh_seconds`` (0: only at cold start). Any failure (S3 unreachable or
slow, missing pointer, sha256 mismatch, a model that does not load or has the wrong
shapes) keeps the model it has and logs why: the function never serves a broken model
and never stops serving.

The registry is only ever read in a background thread. Cold start waits for it at most
``registry_deadline`` seconds (then serves the baked model; the thread finishes, and swaps
in, later); a request never waits for it. On Lambda the process is frozen between
invocations, so a refresh may take several invocations to finish: readers meanwhile see
the old snapshot, and the swap is one reference assignment of a new snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lungscan.errors import InvalidBundleError, ModelUnavailableError, UnknownModelError
from lungscan.model.classifier import Classifier
from lungscan.registry import bundles, pointer

SOURCE_BAKED = "baked"
SOURCE_REGISTRY = "registry"
DEFAULT_REGISTRY_DEADLINE = 3.0


class Log(Protocol):
    """What the store logs through: a ``logging.Logger``, or the function's powertools ``Logger``."""

    def info(self, msg: str, *, extra: Mapping[str, Any] | None = ...) -> None: ...
    def warning(self, msg: str, *, extra: Mapping[str, Any] | None = ...) -> None: ...
    def error(self, msg: str, *, extra: Mapping[str, Any] | None = ...) -> None: ...


@dataclass(frozen=True)
class Snapshot:
    """What is served: replaced as a whole, never changed in place."""

    models: dict[str, Classifier] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # name -> "baked" | "registry"

    def with_model(self, name: str, classifier: Classifier, source: str) -> Snapshot:
        return Snapshot({**self.models, name: classifier}, {**self.sources, name: source})


class ModelStore:
    def __init__(
        self,
        default_name: str,
        baked_bundle: Path | str | None = None,
        *,
        s3=None,
        bucket: str | None = None,
        names: list[str] | None = None,
        refresh_seconds: float = 300.0,
        registry_deadline: float = DEFAULT_REGISTRY_DEADLINE,
        cache_dir: Path | str = "/tmp/lungscan-models",
        logger: Log | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        Args:
            default_name: the model a request gets when it names none.
            baked_bundle: a bundle folder (or bare model.h5 folder) shipped with the code.
            s3, bucket: the registry; without them only the baked bundle is served.
            names: registry names to serve (default: just ``default_name``).
            refresh_seconds: how long a loaded version is trusted before re-reading the pointer;
                0 reads the registry at cold start only.
            registry_deadline: the most seconds cold start waits for the registry, all names together.
        """
        self.default_name = default_name
        self.baked_bundle = Path(baked_bundle) if baked_bundle else None
        self.s3 = s3
        self.bucket = bucket
        self.names = names or [default_name]
        self.refresh_seconds = refresh_seconds
        self.registry_deadline = registry_deadline
        self.cache_dir = Path(cache_dir)
        self.logger = logger or logging.getLogger(__name__)
        self.clock = clock
        self.snapshot = Snapshot()
        self.last_refresh: float | None = None
        # The pointer version last loaded (or refused) per name: not loaded again until the pointer moves.
        self._pointers: dict[str, str] = {}
        self._refresh_lock = threading.Lock()  # one refresher at a time
        self._refresher: threading.Thread | None = None

    @property
    def models(self) -> dict[str, Classifier]:
        return self.snapshot.models

    @models.setter
    def models(self, models: dict[str, Classifier]) -> None:
        """Replace what is served (tests, tools); models not loaded from the registry count as baked."""
        self.snapshot = Snapshot(dict(models), {name: self.sources.get(name, SOURCE_BAKED) for name in models})

    @property
    def sources(self) -> dict[str, str]:
        return self.snapshot.sources

    @property
    def uses_registry(self) -> bool:
        return self.s3 is not None and bool(self.bucket)

    def load(self) -> None:
        """Load the baked fallback, then wait at most ``registry_deadline`` for the bundles."""
        if self.baked_bundle is not None:
            try:
                classifier = Classifier(self.baked_bundle)
                self.snapshot = self.snapshot.with_model(classifier.metadata.name, classifier, SOURCE_BAKED)
                self.logger.info(
                    "loaded baked model",
                    extra={"model_name": classifier.metadata.name, "model_version": classifier.metadata.version},
                )
            except Exception as error:  # keep going: the registry may still provide one
                self.logger.error("baked model failed to load", extra={"reason": str(error)})
        if not self.uses_registry:
            return
        refresher = self.refresh_in_background()
        if refresher is not None:
            refresher.join(self.registry_deadline)
            if refresher.is_alive():
                self.logger.warning(
                    "registry did not answer within the deadline; serving what is loaded, still trying",
                    extra={"deadline_s": self.registry_deadline, "models": sorted(self.models)},
                )

    def refresh_in_background(self) -> threading.Thread | None:
        """Start a refresh in a daemon thread; None when one is already running."""
        if not self._refresh_lock.acquire(blocking=False):
            return None
        self.last_refresh = self.clock()
        thread = threading.Thread(target=self._refresh_then_release, name="model-refresh", daemon=True)
        self._refresher = thread
        try:
            thread.start()
        except Exception:
            self._refresh_lock.release()
            raise
        return thread

    def wait_for_refresh(self, timeout: float | None = None) -> bool:
        """Wait for the running refresh, if any; True when none is running any more."""
        thread = self._refresher
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _refresh_then_release(self) -> None:
        try:
            self.refresh()
        except Exception as error:  # a thread's exception would only reach stderr
            self.logger.error("model refresh failed", extra={"reason": f"{type(error).__name__}: {error}"})
        finally:
            self._refresh_lock.release()

    def refresh(self) -> None:
        """Swap in the registry's latest version of each name, keeping the old one on any failure.

        Runs in the refresher thread (or directly, in tests); it may block on S3.
        """
        if self.s3 is None or not self.bucket:  # not uses_registry, spelled out so that the bucket is a str below
            return
        for name in self.names:
            version = None
            try:
                version = pointer.latest_version(self.s3, self.bucket, name)
                if self._pointers.get(name) == version:
                    continue  # loaded, or refused, under this very pointer
                bundle_dir = bundles.download_bundle(self.s3, self.bucket, name, version, self.cache_dir)
                classifier = Classifier(bundle_dir)  # loads, checks shapes, warms up
                if (classifier.metadata.name, classifier.metadata.version) != (name, version):
                    raise InvalidBundleError(
                        f"models/{name}/{version}/ holds {classifier.metadata.name} {classifier.metadata.version}"
                    )
                self.snapshot = self.snapshot.with_model(name, classifier, SOURCE_REGISTRY)  # one reference swap
                self._pointers[name] = version
                self.logger.info("model swapped in", extra={"model_name": name, "model_version": version})
            except InvalidBundleError as error:
                if version is not None:  # a published bundle does not change: do not fetch it again
                    self._pointers[name] = version
                self.logger.warning(
                    "registry model refused; keeping the current one until latest.json moves",
                    extra={"model_name": name, "model_version": version, "reason": str(error)},
                )
            except Exception as error:  # S3 or disk trouble: tried again at the next refresh
                self.logger.warning(
                    "registry model not loaded; keeping the current one",
                    extra={"model_name": name, "reason": f"{type(error).__name__}: {error}"},
                )

    def refresh_due(self) -> bool:
        if self.refresh_seconds <= 0 or self.last_refresh is None or not self.uses_registry:
            return False
        return self.clock() - self.last_refresh >= self.refresh_seconds

    def get(self, name: str | None = None) -> Classifier:
        """The classifier for ``name`` (the default when None). Never waits for the registry:
        when a refresh is due, it starts one in the background and answers with what is loaded.

        Raises:
            ModelUnavailableError: no model could be loaded at all.
            UnknownModelError: ``name`` is not among the served models.
        """
        if self.refresh_due():
            try:
                self.refresh_in_background()
            except RuntimeError as error:  # no thread to be had: serve now, refresh another time
                self.logger.warning("model refresh not started", extra={"reason": str(error)})
        models = self.models  # one snapshot for the whole lookup
        if not models:
            raise ModelUnavailableError("No model is loaded; try again shortly.")
        if name is None:
            # The default, or the only model there is (e.g. a bare legacy model.h5).
            return models.get(self.default_name) or next(iter(models.values()))
        classifier = models.get(name)
        if classifier is None:
            raise UnknownModelError(f"Model '{name}' is not served. Available: {', '.join(sorted(models))}.")
        return classifier
