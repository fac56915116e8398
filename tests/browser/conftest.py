"""Browser tests: Debian's Chromium, driven by Playwright, against the local stack.

- the stack (moto S3 + the real handler + ``frontend/``) runs as a subprocess on free ports,
  serving the committed default bundle, or a tiny stand-in when that is not built yet;
- every page is served with the Content-Security-Policy CloudFront adds in production, and a
  test fails if the page breaks it or throws a JavaScript error;
- a failing test leaves full-page screenshots of its pages in ``build/artifacts/``.

``tests/browser`` is a package (``__init__.py``) so that this conftest is imported as ``browser.conftest``
and does not replace ``tests/conftest.py`` as the module ``conftest``. The viewports are in
``tests/helpers.py``, with the other helpers test modules share.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from helpers import DESKTOP

from infrastructure.emulation import REPO_ROOT
from infrastructure.local_stack import stack_subprocess

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
AXE_SCRIPT = REPO_ROOT / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = REPO_ROOT / "build" / "artifacts"
# template.yaml's SiteResponseHeadersPolicy, with the API on the same origin and the storage a study's files are
# uploaded to (presigned POSTs) and its previews and heatmaps read from (presigned GETs) at {storage}: locally, moto.
DEPLOYED_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: {storage}; "
    "connect-src 'self' {storage}; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
INSTALL_HINT = "run `make install-browser` (Debian's chromium and axe-core from npm)"


@pytest.fixture(scope="session")
def stack_process(model_bundle_dir, tmp_path_factory):
    """``make run``'s stack on free ports (its base URL, its moto server's port)."""
    log_path = tmp_path_factory.mktemp("browser-stack") / "stack.log"
    with stack_subprocess(log_path, [model_bundle_dir]) as running:
        yield running


@pytest.fixture(scope="session")
def stack(stack_process):
    """The stack's base URL."""
    return stack_process.base_url


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium: never a downloaded browser. Missing is a failure, not a skip."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: {INSTALL_HINT}.", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def axe_script() -> Path:
    if not AXE_SCRIPT.is_file():
        pytest.fail(f"{AXE_SCRIPT.relative_to(REPO_ROOT)} is missing: {INSTALL_HINT}.", pytrace=False)
    return AXE_SCRIPT


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


class PageWatch:
    """What a page did that a test did not ask for: CSP violations, JS errors, requests."""

    def __init__(self, page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.requests: list[tuple[str, str]] = []
        page.on("pageerror", lambda error: self.errors.append(f"JavaScript error: {error}"))
        page.on("console", self._console)
        page.on("request", lambda request: self.requests.append((request.method, request.url)))

    def _console(self, message) -> None:
        if message.type == "error" and re.search(r"Content.Security.Policy|Refused to", message.text):
            self.errors.append(f"CSP: {message.text}")

    def predict_requests(self) -> list[tuple[str, str]]:
        return [(method, url) for method, url in self.requests if url.split("?")[0].endswith("/predict")]


@pytest.fixture
def open_page(browser, stack, stack_process, request):
    """Open the page (desktop by default) under the production CSP; returns (page, watch)."""
    contexts, watches = [], []

    def _open(viewport: dict | None = None, *, mobile: bool = False, config: str | None = None):
        context = browser.new_context(
            viewport=viewport or DESKTOP,
            is_mobile=mobile,
            has_touch=mobile,
            device_scale_factor=2 if mobile else 1,
            accept_downloads=True,
            # The page is fulfilled by a route (to add the CSP), so Chromium cannot tell it came from 127.0.0.1 and
            # asks the user before it reaches a loopback address: the presigned uploads to the local S3. Served
            # directly (make run) or deployed (CloudFront to S3), no such prompt comes up.
            permissions=["local-network-access"],
        )
        context.set_default_timeout(30_000)
        contexts.append(context)

        def with_csp(route):
            response = route.fetch()
            csp = DEPLOYED_CSP.format(storage=f"http://127.0.0.1:{stack_process.s3_port}")
            route.fulfill(response=response, headers={**response.headers, "content-security-policy": csp})

        context.route(re.compile(r"^http://127\.0\.0\.1:\d+/(index\.html)?$"), with_csp)
        if config is not None:  # a deployment's config.js, e.g. a short timeout
            context.route("**/config.js", lambda route: route.fulfill(body=config, content_type="text/javascript"))
        page = context.new_page()
        page.add_init_script(
            "document.addEventListener('securitypolicyviolation', (e) =>"
            " console.error('Content-Security-Policy violation: ' + e.violatedDirective + ' ' + e.blockedURI));"
        )
        watch = PageWatch(page)
        watches.append(watch)
        page.goto(stack + "/")
        page.wait_for_load_state("networkidle")
        return page, watch

    yield _open

    failed = any(
        getattr(request.node, f"report_{when}", None) and getattr(request.node, f"report_{when}").failed
        for when in ("setup", "call")
    )
    if failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for index, watch in enumerate(watches):
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
            try:
                watch.page.screenshot(path=ARTIFACTS / f"{name}-{index}.png", full_page=True)
            except Exception as error:  # a crashed page must not hide the test's own failure
                print(f"screenshot of {name} failed: {error}")
    problems = [problem for watch in watches for problem in watch.errors]
    for context in contexts:
        context.close()
    if problems and not failed:
        pytest.fail("the page broke the production CSP or threw:\n" + "\n".join(problems), pytrace=False)
