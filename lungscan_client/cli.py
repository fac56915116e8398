"""``lungscan classify FILE... --api URL``: classify CT slices with a LungScan API.

Results go to stdout (JSON or CSV), in the order of the files; failures and a summary line go
to stderr. The exit code is 0 when every file was classified, 1 when any failed, 2 on a usage
error.
"""

from __future__ import annotations

import argparse
import csv
import ipaddress
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from lungscan_client import (
    DEFAULT_MAX_BYTES,
    ClassifyResult,
    RetryPolicy,
    StudyError,
    __version__,
    classify_files,
    pacs_command,
    predict_url,
    run_study,
    screen_cli,
)

API_URL_ENV = "LUNGSCAN_API_URL"
API_KEY_ENV = "LUNGSCAN_API_KEY"
DISCLAIMER = "Research tool. Not a diagnosis. A clinician must review every scan."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lungscan",
        description="Client for a LungScan API (first-pass lung CT screening). " + DISCLAIMER,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    classify = commands.add_parser(
        "classify",
        help="classify CT slices (PNG, JPEG, DICOM)",
        description="Classify CT slices (PNG, JPEG, DICOM) with POST /predict. " + DISCLAIMER,
        epilog="Exit code: 0 all classified, 1 any file failed, 2 usage error.",
    )
    classify.add_argument("files", nargs="+", metavar="FILE", help="files, or folders (all files inside, recursively)")
    classify.add_argument(
        "--api",
        default=os.environ.get(API_URL_ENV),
        metavar="URL",
        help=f"the API's base URL, e.g. https://ID.execute-api.REGION.amazonaws.com/Prod (default: ${API_URL_ENV})",
    )
    classify.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        metavar="KEY",
        help=f"sent as x-api-key, where the API requires one (default: ${API_KEY_ENV}; prefer it: "
        "command lines show up in process lists)",
    )
    classify.add_argument("--model", metavar="NAME", help="a model the API serves (default: the API's default)")
    classify.add_argument("--explain", action="store_true", help="ask for Grad-CAM heatmaps (in JSON output only)")
    classify.add_argument("--format", choices=("json", "csv"), default="json", help="output format (default: json)")
    classify.add_argument("--concurrency", type=positive_int, default=4, help="requests in flight (default: 4)")
    classify.add_argument(
        "--retries",
        type=non_negative_int,
        default=3,
        metavar="N",
        help="retries per file after a 429/5xx answer, a timeout or a connection error (default: 3)",
    )
    classify.add_argument(
        "--backoff",
        type=non_negative_float,
        default=0.5,
        metavar="SECONDS",
        help="first retry wait, doubled per attempt, with jitter (default: 0.5)",
    )
    classify.add_argument("--timeout", type=positive_float, default=60.0, metavar="SECONDS", help="per attempt")
    classify.add_argument(
        "--max-bytes",
        type=positive_int,
        default=DEFAULT_MAX_BYTES,
        help=f"larger files fail without being sent (default: {DEFAULT_MAX_BYTES}, the API's limit)",
    )
    classify.add_argument(
        "--allow-http",
        action="store_true",
        help="allow plain http:// to a host other than this machine (images would cross the network unencrypted)",
    )
    study = commands.add_parser(
        "study",
        help="classify a whole study (a folder: a DICOM series of any size)",
        description="Upload a folder as one study (straight to S3), wait, print the study's answer. " + DISCLAIMER,
        epilog="Exit code: 0 answered, 1 the study failed or was refused, 2 usage error.",
    )
    study.add_argument("folder", metavar="DIR", help="the study's files (every file inside, recursively)")
    study.add_argument("--api", default=os.environ.get(API_URL_ENV), metavar="URL", help=f"(default: ${API_URL_ENV})")
    study.add_argument(
        "--api-key", default=os.environ.get(API_KEY_ENV), metavar="KEY", help=f"(default: ${API_KEY_ENV})"
    )
    study.add_argument("--model", metavar="NAME", help="a model the API serves (default: the API's default)")
    study.add_argument("--patient", metavar="REF", help="pseudonymous patient reference (needs $LUNGSCAN_TOKEN)")
    study.add_argument("--format", choices=("json", "csv"), default="json", help="output format (default: json)")
    study.add_argument("--allow-http", action="store_true", help="allow plain http:// to another machine")
    screen_cli.add_parser(commands)  # lungscan screen s3://BUCKET/PREFIX (issue 23)
    pacs_command.add_parser(commands, DISCLAIMER, checked_url)
    return parser


def _bounded(name: str, cast: type, breaks: Callable[[float], bool], rule: str) -> Callable[[str], float]:
    """An argparse ``type``: ``cast`` the text, then refuse a value that ``breaks`` the ``rule``."""

    def parse(text: str):
        value = cast(text)
        if breaks(value):
            raise argparse.ArgumentTypeError(rule)
        return value

    parse.__name__ = name  # argparse names it in "invalid <name> value: ..."
    return parse


positive_int = _bounded("positive_int", int, lambda value: value < 1, "must be at least 1")
non_negative_int = _bounded("non_negative_int", int, lambda value: value < 0, "must be 0 or more")
positive_float = _bounded("positive_float", float, lambda value: value <= 0, "must be greater than 0")
non_negative_float = _bounded("non_negative_float", float, lambda value: value < 0, "must be 0 or more")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def checked_url(url: str, flag: str, allow_http: bool, parser: argparse.ArgumentParser) -> str:
    """``url`` if https://, or http:// to this machine (or with --allow-http); else a usage error."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        parser.error(f"{flag} must be an https:// URL")
    if parts.scheme == "http" and not is_loopback(parts.hostname or "") and not allow_http:
        parser.error(f"{flag} is plain http:// to another machine: use https://, or pass --allow-http")
    return url.rstrip("/")


def expand(paths: Sequence[str]) -> list[str]:
    """Folders become the regular files inside them (sorted, hidden files skipped); files stay."""
    files: list[str] = []
    for path in paths:
        folder = Path(path)
        if folder.is_dir():
            files += sorted(
                str(file)
                for file in folder.rglob("*")
                if file.is_file() and not any(part.startswith(".") for part in file.relative_to(folder).parts)
            )
        else:
            files.append(path)  # a missing file is reported as a failed file, not a usage error
    return files


def csv_rows(results: list[ClassifyResult]) -> tuple[list[str], list[dict]]:
    classes: list[str] = []
    for result in results:
        for name in (result.answer or {}).get("probabilities", {}):
            if name not in classes:
                classes.append(name)
    columns = ["file", "ok", "status", "label", "tier", "verdict", "suspicious", "confidence", "prediction_set"]
    columns += ["uncertain", "unfamiliar"]
    columns += [f"p_{name}" for name in classes]
    columns += ["threshold", "model_name", "model_version", "request_id", "error_code", "error_message", "attempts"]
    rows = []
    for result in results:
        answer = result.answer or {}
        model = answer.get("model") or {}
        row = {
            "file": result.file,
            "ok": str(result.ok).lower(),
            "status": result.status if result.status is not None else "",
            "label": answer.get("label", ""),
            "tier": answer.get("tier", ""),
            "verdict": answer.get("verdict", ""),
            "suspicious": str(answer["suspicious"]).lower() if "suspicious" in answer else "",
            "confidence": answer.get("confidence", ""),
            # The conformal set as one cell (classes joined by "|"); uncertain when it mixes flagged and unflagged.
            "prediction_set": "|".join(answer.get("prediction_set") or []),
            "uncertain": str(answer["uncertain"]).lower() if answer.get("uncertain") is not None else "",
            "unfamiliar": str(answer["unfamiliar"]).lower() if answer.get("unfamiliar") is not None else "",
            "threshold": answer.get("threshold", ""),
            "model_name": model.get("name", ""),
            "model_version": model.get("version", ""),
            "request_id": result.request_id or "",
            "error_code": result.error_code or "",
            "error_message": result.error_message or "",
            "attempts": result.attempts,
        }
        for name in classes:
            row[f"p_{name}"] = answer.get("probabilities", {}).get(name, "")
        rows.append(row)
    return columns, rows


def write_results(results: list[ClassifyResult], output_format: str, stream) -> None:
    if output_format == "json":
        json.dump([result.to_dict() for result in results], stream, indent=2)
        stream.write("\n")
        return
    columns, rows = csv_rows(results)
    writer = csv.DictWriter(stream, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


def summary(results: list[ClassifyResult], seconds: float) -> str:
    classified = [result for result in results if result.ok]
    suspicious = sum(1 for result in classified if (result.answer or {}).get("suspicious"))
    failed = len(results) - len(classified)
    noun = "file" if len(results) == 1 else "files"
    return (
        f"lungscan: {len(results)} {noun}: {len(classified)} classified ({suspicious} suspicious), "
        f"{failed} failed in {seconds:.1f} s. {DISCLAIMER}"
    )


def classify_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not args.api:
        parser.error(f"--api URL is required (or set ${API_URL_ENV})")
    try:
        url = predict_url(args.api)
    except ValueError as error:
        parser.error(str(error))
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http"):
        parser.error(f"--api must be an https:// URL, not {parts.scheme}://")
    if parts.scheme == "http" and not is_loopback(parts.hostname or "") and not args.allow_http:
        parser.error("--api is plain http:// to another machine: use https://, or pass --allow-http")

    files = expand(args.files)
    if not files:
        parser.error("no files to classify")
    lock = threading.Lock()

    def report(result: ClassifyResult) -> None:
        if not result.ok:
            status = f" ({result.status})" if result.status else ""
            request = f" [request {result.request_id}]" if result.request_id else ""
            with lock:
                print(
                    f"lungscan: {result.file}: {result.error_code}{status}: {result.error_message}{request}",
                    file=sys.stderr,
                    flush=True,
                )

    started = time.monotonic()
    results = classify_files(
        files,
        url,
        model=args.model,
        explain=args.explain,
        concurrency=args.concurrency,
        retry=RetryPolicy(attempts=args.retries + 1, backoff_base=args.backoff),
        timeout=args.timeout,
        max_bytes=args.max_bytes,
        headers={"x-api-key": args.api_key} if args.api_key else None,
        on_result=report,
    )
    write_results(results, args.format, sys.stdout)
    sys.stdout.flush()
    print(summary(results, time.monotonic() - started), file=sys.stderr, flush=True)
    return 0 if all(result.ok for result in results) else 1


STUDY_CSV_FIELDS = [
    "index",
    "series",
    "instance_number",
    "position",
    "label",
    "positive_probability",
    "suspicious",
    "uncertain",
    "tier",
    "error",
]


def study_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not args.api:
        parser.error(f"--api URL is required (or set ${API_URL_ENV})")
    parts = urlsplit(args.api)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        parser.error("--api must be an https:// URL")
    if parts.scheme == "http" and not is_loopback(parts.hostname or "") and not args.allow_http:
        parser.error("--api is plain http:// to another machine: use https://, or pass --allow-http")
    files = [Path(path) for path in expand([args.folder])]
    if not files:
        parser.error("no files in the folder")
    token = os.environ.get("LUNGSCAN_TOKEN")
    if args.patient and not token:
        parser.error("--patient needs a clinician's ID token in $LUNGSCAN_TOKEN")

    def report(stage: str, done: int, total: int) -> None:
        sys.stderr.write(f"\rlungscan: {stage} {done}/{total} " + "#" * (30 * done // max(total, 1)))
        sys.stderr.flush()

    try:
        answer = run_study(
            files, args.api, model=args.model, patient=args.patient, token=token, progress=report, api_key=args.api_key
        )
    except StudyError as error:
        print(f"\nlungscan: {error.code}: {error.message}", file=sys.stderr)
        return 1
    if args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=STUDY_CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for item in answer["slices"]:
            writer.writerow({**item, "error": (item.get("error") or {}).get("code")})
    else:
        json.dump(answer, sys.stdout, indent=2)
        sys.stdout.write("\n")
    sys.stdout.flush()
    summary = answer.get("summary") or {}
    print(
        f"\nlungscan: study {answer['status']}: {summary.get('flagged', 0)} flagged of {summary.get('total', 0)} slices"
        f" ({summary.get('failed', 0)} refused). {DISCLAIMER}",
        file=sys.stderr,
    )
    return 0 if answer["status"] == "done" else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "classify":
            return classify_command(args, parser)
        if args.command == "study":
            return study_command(args, parser)
        if args.command == "screen":
            return screen_cli.command(args)
        if args.command == "pacs":
            return args.run(args, parser)
    except KeyboardInterrupt:
        print("lungscan: interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
