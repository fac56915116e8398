"""``lungscan pacs``: screen a study in the PACS and file the results back into it (DICOMweb).

    lungscan pacs --dicomweb URL --study STUDY_UID --api URL
    lungscan pacs --dicomweb URL --since 2026-12-01 --api URL     # every new CT study, e.g. from cron

The PACS's Authorization header comes from ``$LUNGSCAN_PACS_AUTHORIZATION`` only (command lines show up in process
lists). One JSON line per study goes to stdout, a line in words to stderr. Exit code: 0 when every study's SR and key
image are stored (or were already), 1 when any study failed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from lungscan_client.pacs import (
    PACS_AUTH_ENV,
    PacsError,
    RoundTrip,
    each_new_study,
    fetch_results,
    pacs_client,
    round_trip,
)
from lungscan_client.study import StudyError, run_study

DICOMWEB_ENV = "LUNGSCAN_DICOMWEB_URL"
API_URL_ENV = "LUNGSCAN_API_URL"
TOKEN_ENV = "LUNGSCAN_TOKEN"  # as `lungscan study`: a clinician's ID token, where the API wants one
API_KEY_ENV = "LUNGSCAN_API_KEY"


def add_parser(commands, disclaimer: str, checked_url: Callable[..., str]) -> None:
    pacs = commands.add_parser(
        "pacs",
        help="screen a PACS study and file the DICOM SR and key image back (DICOMweb)",
        description="Retrieve a CT study from a PACS (WADO-RS), classify it through the LungScan API's studies "
        "path, and store a Structured Report and a key image back into the same study (STOW-RS). " + disclaimer,
        epilog=f"The PACS's Authorization header is read from ${PACS_AUTH_ENV} (e.g. 'Basic dXNlcjpwYXNz'), "
        "never from the command line. Exit code: 0 all stored, 1 any study failed, 2 usage error.",
    )
    pacs.add_argument(
        "--dicomweb", default=os.environ.get(DICOMWEB_ENV), metavar="URL", help="the PACS's DICOMweb root"
    )
    which = pacs.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", metavar="STUDY_UID", help="the StudyInstanceUID to screen")
    which.add_argument(
        "--since", type=since_date, metavar="DATE", help="every CT study dated DATE (YYYY-MM-DD) or later"
    )
    pacs.add_argument("--api", default=os.environ.get(API_URL_ENV), metavar="URL", help="the LungScan API's base URL")
    pacs.add_argument("--model", metavar="NAME", help="a model the API serves (default: the API's default)")
    pacs.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="per PACS request (default 30)")
    pacs.add_argument("--allow-http", action="store_true", help="allow plain http:// to another machine")
    pacs.set_defaults(run=lambda args, parser: pacs_command(args, parser, checked_url))


def since_date(text: str) -> str:
    try:
        return datetime.date.fromisoformat(text.replace("-", "") if len(text) == 8 else text).strftime("%Y%m%d")
    except ValueError:
        raise argparse.ArgumentTypeError("a date, YYYY-MM-DD") from None


def pacs_command(args: argparse.Namespace, parser: argparse.ArgumentParser, checked_url: Callable[..., str]) -> int:
    if not args.dicomweb:
        parser.error(f"--dicomweb URL is required (or set ${DICOMWEB_ENV})")
    if not args.api:
        parser.error(f"--api URL is required (or set ${API_URL_ENV})")
    dicomweb = checked_url(args.dicomweb, "--dicomweb", args.allow_http, parser)
    api = checked_url(args.api, "--api", args.allow_http, parser)
    if args.timeout <= 0:
        parser.error("--timeout must be greater than 0")
    token, api_key = os.environ.get(TOKEN_ENV), os.environ.get(API_KEY_ENV)
    client = pacs_client(dicomweb, authorization=os.environ.get(PACS_AUTH_ENV), timeout=args.timeout)

    def classify(paths) -> dict[str, Any]:
        try:
            return run_study(paths, api, model=args.model, token=token, api_key=api_key)
        except StudyError as error:
            raise PacsError(error.code, f"the LungScan API did not classify the study: {error.message}") from None

    def results(answer: dict[str, Any]) -> list:
        return fetch_results(api, answer["study_id"], token=token, api_key=api_key)

    if args.study:
        outcomes = [round_trip(client, args.study, classify, results)]
    else:
        outcomes = []
        try:
            for study_uid, done in each_new_study(client, args.since):
                outcome = RoundTrip(study_uid, ok=True, status="skipped") if done else None
                outcomes.append(outcome or round_trip(client, study_uid, classify, results))
                report(outcomes[-1], len(outcomes))
        except PacsError as error:
            print(f"lungscan pacs: {error.code}: {error.message}", file=sys.stderr)
            return 1
        if not outcomes:
            print(f"lungscan pacs: no CT study since {args.since}", file=sys.stderr)
    if args.study:
        report(outcomes[0], None)
    for outcome in outcomes:
        print(json.dumps(outcome.to_dict()))
    return 0 if all(outcome.ok for outcome in outcomes) else 1


def report(outcome: RoundTrip, number: int | None) -> None:
    """One line in words per study (its UID only in --since runs, where the operator must know which)."""
    which = f"study {number} ({outcome.study_instance_uid})" if number else "study"
    if outcome.status == "skipped":
        line = f"{which}: already holds LungScan results, skipped"
    elif outcome.ok:
        tier = (outcome.summary or {}).get("tier")
        line = f"{which}: {outcome.instances} CT images classified ({tier}); SR and key image stored in the PACS"
    else:
        assert outcome.error is not None
        line = f"{which}: {outcome.error.code}: {outcome.error.message}"
    print(f"lungscan pacs: {line}", file=sys.stderr, flush=True)
