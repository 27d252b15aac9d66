"""`dp snapshot ...`: request a report snapshot, poll it, list the reports; `dp snapshot-api`.

    dp snapshot request <report> [--param name=value ...] [--request-id ID] [--wait [--timeout S]]
    dp snapshot status <request-id or snapshot-id> [--json]
    dp snapshot reports [--json]
    dp snapshot-api [--host H] [--port 8710]      (token in SNAPSHOT_API_TOKEN)

`request` checks the report and its parameters against the catalog, then sends the message
straight to the request queue, as any SQS client would (not through the HTTP API), and prints the
request id on the first line of stdout. With --wait it polls the request's DynamoDB item until
READY (prints the snapshot id and its files' URIs) or FAILED (prints the error).

Exit codes: 0 sent / READY / found; 1 FAILED, not found, or the queue or table unavailable;
2 bad usage (unknown report, bad parameter: nothing is sent); 3 --wait timed out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.snapshots.store import SnapshotStore

DEFAULT_PORT = 8710
DEFAULT_TIMEOUT = 120.0
POLL_SECONDS = 0.5
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3


def add_parser(sub: Any) -> None:
    p = sub.add_parser("snapshot", help="report snapshots: request one, poll its state, list the reports")
    snap = p.add_subparsers(dest="snapshot_command", required=True)
    req = snap.add_parser("request", help="send a snapshot request to the request queue")
    req.add_argument("report", help="the report id (dp snapshot reports)")
    req.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a report parameter (repeatable); omitted ones take their defaults",
    )
    req.add_argument("--request-id", default=None, help="the id to poll (default: a new req-<uuid>)")
    req.add_argument("--wait", action="store_true", help="poll until READY or FAILED")
    req.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"with --wait: give up after this many seconds, exit 3 (default {DEFAULT_TIMEOUT:.0f})",
    )
    status = snap.add_parser("status", help="a request's or a snapshot's state")
    status.add_argument("id", help="a request id or a snapshot id")
    status.add_argument("--json", action="store_true", help="the item as JSON")
    reports = snap.add_parser("reports", help="the reports and their parameters")
    reports.add_argument("--json", action="store_true", help="as JSON (as GET /v1/reports)")

    api = sub.add_parser("snapshot-api", help="serve the report snapshot HTTP API (FastAPI on uvicorn)")
    api.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    api.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    api.add_argument("--access-log", action="store_true", help="log every request")


def run(args: argparse.Namespace) -> int:
    if args.command == "snapshot-api":
        return run_api(args)
    if args.snapshot_command == "request":
        return request(args.report, args.param, args.request_id, args.wait, args.timeout)
    if args.snapshot_command == "status":
        return status(args.id, args.json)
    return list_reports(args.json)


def _err(message: str) -> None:
    print(f"dp snapshot: {message}", file=sys.stderr)


def _aws() -> Any:
    from resources.profiles import build_resources

    return build_resources()["aws"]  # the profile's clients: moto locally, AWS on the aws profile


def _parse_params(pairs: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--param {pair!r} must be NAME=VALUE")
        if name in params:
            raise ValueError(f"--param {name} is given twice")
        params[name] = value
    return params


# --- request -----------------------------------------------------------------------------------
def request(report_id: str, pairs: list[str], request_id: str | None, wait: bool, timeout: float) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from resources import settings
    from services.snapshots.catalog import ReportCatalogError, ReportRequestError, get_report, validate_params
    from services.snapshots.messages import REQUEST_ID, new_request_id, request_body

    if wait and not timeout > 0:
        _err(f"--timeout must be positive, not {timeout}")
        return EXIT_USAGE
    try:
        params = _parse_params(pairs)
        if request_id is not None and not REQUEST_ID.fullmatch(request_id):
            raise ValueError(
                f"--request-id {request_id!r} must be 1-128 letters, digits, '_', '.', ':' or '-'"
            )
        report = get_report(report_id)
        validate_params(report, params)  # the consumer checks again; this one spares a FAILED item
    except (ReportRequestError, ValueError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    except ReportCatalogError as exc:
        _err(f"the report catalog does not load:\n{exc}")
        return EXIT_FAILED
    request_id = request_id or new_request_id()
    aws = _aws()
    queue = settings.snapshot_queue_name()
    sqs = aws.client("sqs")
    try:
        url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody=request_body(report.id, params, request_id))
    except (BotoCoreError, ClientError) as exc:
        _err(f"the request could not be sent to queue {queue!r}: {exc}")
        return EXIT_FAILED
    print(request_id, flush=True)
    if not wait:
        return EXIT_OK
    from services.snapshots.store import SnapshotStore

    return wait_for_request(SnapshotStore.from_resources(aws), request_id, timeout)


def wait_for_request(store: SnapshotStore, request_id: str, timeout: float) -> int:
    """Poll the request item until READY (print the files, 0) or FAILED (print the error, 1);
    3 when neither came within timeout seconds."""
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + timeout
    last: str | None = None
    while True:
        try:
            item = store.get_request(request_id)
        except store.client.exceptions.ResourceNotFoundException:
            item = None  # the sensor has not made the table yet
        except (BotoCoreError, ClientError) as exc:
            _err(f"the state table {store.table_name!r} cannot be read: {exc}")
            return EXIT_FAILED
        state = None if item is None else item["state"]
        if state != last:
            print(f"{request_id}: {state or 'sent, not recorded yet'}", file=sys.stderr, flush=True)
            last = state
        if item is not None and state == "READY":
            print(f"READY {item.get('snapshot_id')}")
            for fmt, uri in sorted((item.get("files") or {}).items()):
                print(f"{fmt:<4} {uri}")
            if not item.get("files") and item.get("uri"):
                print(item["uri"])
            return EXIT_OK
        if item is not None and state == "FAILED":
            print(f"FAILED {item.get('snapshot_id') or request_id}: {item.get('error')}")
            return EXIT_FAILED
        if time.monotonic() >= deadline:
            where = (
                "not recorded yet (is the platform's sensor running?)" if item is None else f"still {state}"
            )
            _err(f"timed out after {timeout:g} s: request {request_id} is {where}")
            return EXIT_TIMEOUT
        time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))


# --- status ------------------------------------------------------------------------------------
ORDER = (
    "request_id",
    "snapshot_id",
    "report_id",
    "state",
    "attempts",
    "params",
    "data_versions",
    "uri",
    "files",
    "rows",
    "checksum",
    "error",
    "last_error",
    "retry_at",
    "lease_owner",
    "lease_until",
    "received_at",
    "created_at",
    "updated_at",
    "ready_at",
    "render_seconds",
    "failed_at",
)


def format_item(item: dict[str, Any]) -> list[str]:
    """The item as aligned `name  value` lines, the fields a person looks for first."""
    keys = [k for k in ORDER if item.get(k) not in (None, {}, "")]
    keys += sorted(k for k in item if k not in ORDER and item[k] not in (None, {}, ""))
    width = max((len(k) for k in keys), default=0)
    lines = []
    for key in keys:
        value = item[key]
        if key == "files":
            for i, (fmt, uri) in enumerate(sorted(value.items())):
                lines.append(f"{key if i == 0 else '':<{width}}  {fmt:<4} {uri}")
            continue
        if isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        lines.append(f"{key:<{width}}  {value}")
    return lines


def status(item_id: str, as_json: bool) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from services.snapshots.ids import is_snapshot_id
    from services.snapshots.store import SnapshotStore

    store = SnapshotStore.from_resources(_aws())
    item: dict[str, Any] | None = None
    try:
        if is_snapshot_id(item_id):
            snapshot = store.get(item_id)
            item = None if snapshot is None else snapshot.to_dict()
        if item is None:
            item = store.get_request(item_id)
    except ValueError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except store.client.exceptions.ResourceNotFoundException:
        _err(f"the state table {store.table_name!r} does not exist (yet): nothing has been recorded")
        return EXIT_FAILED
    except (BotoCoreError, ClientError) as exc:
        _err(f"the state table {store.table_name!r} cannot be read: {exc}")
        return EXIT_FAILED
    if item is None:
        _err(
            f"no request or snapshot {item_id} (yet): a request is recorded when the platform's "
            "sensor reads the queue, within ~15 s of being sent"
        )
        return EXIT_FAILED
    if as_json:
        print(json.dumps(item, indent=2, sort_keys=True))
    else:
        print("\n".join(format_item(item)))
    return EXIT_OK


# --- reports -----------------------------------------------------------------------------------
def list_reports(as_json: bool) -> int:
    from services.snapshots.api import report_info
    from services.snapshots.catalog import ReportCatalogError, load_reports

    try:
        reports = load_reports()
    except ReportCatalogError as exc:
        _err(f"the report catalog does not load:\n{exc}")
        return EXIT_FAILED
    infos = [report_info(reports[r]) for r in sorted(reports)]
    if as_json:
        print(json.dumps({"reports": infos}, indent=2))
        return EXIT_OK
    for info in infos:
        print(f"{info['id']}  {info['title']}  ({', '.join(info['formats'])})")
        width = max((len(n) for n in info["parameters"]), default=0)
        for name, p in info["parameters"].items():
            if p["required"]:
                notes = ["required"]
            else:
                notes = ["optional" if p["default"] is None else f"default {p['default']}"]
            if p["choices"]:
                notes.append("one of " + "|".join(p["choices"]))
            if p["min"] is not None or p["max"] is not None:
                notes.append(
                    f"[{'' if p['min'] is None else p['min']} .. {'' if p['max'] is None else p['max']}]"
                )
            line = f"    {name:<{width}}  {p['type']:<9}  {', '.join(notes)}"
            print(line + (f"  {p['description']}" if p["description"] else ""))
    return EXIT_OK


# --- the HTTP API ------------------------------------------------------------------------------
def run_api(args: argparse.Namespace) -> int:
    from services.snapshots.api import TOKEN_ENV

    if not os.environ.get(TOKEN_ENV, "").strip():
        print(f"snapshot-api: set {TOKEN_ENV} to the bearer token clients send", file=sys.stderr)
        return EXIT_USAGE
    import uvicorn

    uvicorn.run(
        "services.snapshots.api:create_app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        access_log=args.access_log,
        log_level="info",
    )
    return EXIT_OK
