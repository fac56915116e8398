"""``lungscan screen s3://BUCKET/PREFIX [--model NAME] [--endpoint-url URL] [--wait] [--format json|csv]``: the
command over ``lungscan_client.screen``. Exit code: 0 started (or, with ``--wait``, finished: per-object errors are
rows of the report), 1 the screen failed, could not start or found no object, 2 usage error."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Any

from lungscan_client.screen import RESULTS_BUCKET_ENV, STATE_MACHINE_ENV, ScreenError, screen

DISCLAIMER = "Research tool. Not a diagnosis. A clinician must review every scan."
CSV_FIELDS = [
    "key",
    "status",
    "label",
    "tier",
    "positive_probability",
    "suspicious",
    "uncertain",
    "unfamiliar",
    "error",
]


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "screen",
        help="screen every CT image under an S3 prefix (an archive) with the stack's state machine",
        description="Screen every object under s3://BUCKET/PREFIX (DICOM, PNG, JPEG; other objects are skipped and "
        "counted) with the study state machine (Step Functions), using your AWS credentials. " + DISCLAIMER,
        epilog="Exit code: 0 started or finished, 1 the screen failed, 2 usage error. docs/archive.md",
    )
    parser.add_argument("url", metavar="s3://BUCKET/PREFIX")
    parser.add_argument("--model", metavar="NAME", help="a model the stack serves (default: its default)")
    parser.add_argument("--endpoint-url", metavar="URL", help="AWS endpoint (make run's: http://127.0.0.1:5002)")
    parser.add_argument("--region", help="AWS region (default: your AWS configuration's)")
    parser.add_argument(
        "--state-machine",
        default=os.environ.get(STATE_MACHINE_ENV),
        metavar="ARN",
        help=f"the stack's StudyStateMachineArn output (default: ${STATE_MACHINE_ENV}, else found by name)",
    )
    parser.add_argument(
        "--results-bucket",
        default=os.environ.get(RESULTS_BUCKET_ENV),
        metavar="BUCKET",
        help=f"where the report goes: the stack's UploadsBucketName output (default: ${RESULTS_BUCKET_ENV}; "
        "locally the archive bucket)",
    )
    parser.add_argument("--wait", action="store_true", help="wait, show progress, print the report")
    parser.add_argument("--format", choices=("json", "csv"), default="json", help="output format (default: json)")


def command(args: argparse.Namespace) -> int:
    def progress(line: str) -> None:
        print(f"lungscan: {line}", file=sys.stderr, flush=True)

    try:
        answer = screen(
            args.url,
            model=args.model,
            endpoint_url=args.endpoint_url,
            region=args.region,
            state_machine=args.state_machine,
            results_bucket=args.results_bucket,
            wait=args.wait,
            progress=progress,
        )
    except ScreenError as error:
        print(f"lungscan: {error}", file=sys.stderr)
        return 1
    if not args.wait:
        json.dump(answer, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in answer["rows"]:  # true/false, as lungscan classify writes them
            writer.writerow(
                {name: str(value).lower() if isinstance(value, bool) else value for name, value in row.items()}
            )
    else:
        json.dump(answer, sys.stdout, indent=2)
        sys.stdout.write("\n")
    sys.stdout.flush()
    summary = answer["summary"]
    if not summary["objects"]:  # deployed, also what a bucket the machine may not list looks like
        print(
            f"lungscan: no object under {args.url} was screened: is the prefix right, and is the bucket in the "
            "stack's ArchiveBucketNames?",
            file=sys.stderr,
        )
        return 1
    print(
        f"lungscan: {summary['objects']} objects: {summary['flagged']} flagged of {summary['answered']} answered, "
        f"{summary['errors']} errors, {summary['skipped']} skipped ({summary['classified']} classified now, "
        f"{summary['reused']} from earlier runs); report {summary['report']}. {DISCLAIMER}",
        file=sys.stderr,
    )
    return 0
