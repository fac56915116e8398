"""Regenerate events/*.json from tests/fixtures with `sam local generate-event`.

The events keep the exact shape SAM CLI emits for `apigateway aws-proxy`; only what a real
API Gateway REST request to this stack would differ in is changed afterwards: the body and
its isBase64Encoded flag (only BinaryMediaTypes arrive base64-encoded), Content-Type, and no
query string or path parameters (explicit routes, not {proxy+}).

Usage, from the repository root:
    python -m events.generate [OUT_DIR]    (default: events/; SAM_CLI overrides the sam path)
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from infrastructure.emulation import REPO_ROOT, STAGE, with_body

FIXTURES = REPO_ROOT / "tests" / "fixtures"
SAM_CLI = os.environ.get("SAM_CLI", str(REPO_ROOT / ".venv-sam" / "bin" / "sam"))


def generate_event(method: str, resource: str) -> dict:
    """Return the event `sam local generate-event apigateway aws-proxy` emits for one route."""
    command = [SAM_CLI, "local", "generate-event", "apigateway", "aws-proxy", "--method", method]
    command += ["--resource", resource, "--path", resource.lstrip("/"), "--stage", STAGE]  # sam adds the "/"
    environment = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
    result = subprocess.run(command, check=True, capture_output=True, text=True, env=environment)
    event = json.loads(result.stdout)
    event["queryStringParameters"] = None
    event["multiValueQueryStringParameters"] = None
    event["pathParameters"] = None
    return event


def with_content(event: dict, body: str | bytes | None, content_type: str | None) -> dict:
    """Set the body as API Gateway delivers it (``infrastructure.emulation.with_body``) and its Content-Type."""
    with_body(event, body)
    if content_type:
        event["headers"]["Content-Type"] = content_type
        event["multiValueHeaders"]["Content-Type"] = [content_type]
    return event


def build_events() -> dict[str, dict]:
    png = (FIXTURES / "ct_normal_256.png").read_bytes()
    jpeg = (FIXTURES / "ct_malignant_256.jpg").read_bytes()
    png_json = json.dumps({"image": base64.b64encode(png).decode("ascii"), "filename": "slice.png", "explain": False})
    return {
        "predict_png_json": with_content(generate_event("POST", "/predict"), png_json, "application/json"),
        "predict_raw_jpeg": with_content(generate_event("POST", "/predict"), jpeg, "image/jpeg"),
        "predict_bad_body": with_content(generate_event("POST", "/predict"), "this is not json", "application/json"),
        "health": with_content(generate_event("GET", "/health"), None, None),
    }


def main() -> None:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT / "events"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, event in build_events().items():
        (out_dir / f"{name}.json").write_text(json.dumps(event, indent=2) + "\n")
        print(f"wrote {out_dir / name}.json")


if __name__ == "__main__":
    main()
