"""The moto server the platform runs locally and in tests, with DynamoDB's write atomicity.

    python -m services.moto_server -H 127.0.0.1 -p 5055

moto's own `moto_server`, plus one thing: DynamoDB requests are handled one at a time. moto
evaluates a conditional write's condition and applies the write in separate steps and serves
requests on threads, so two concurrent conditional writes to one item could both succeed, which
DynamoDB never allows. The snapshot store's claims and the ledger's conditional writes rely on
that guarantee, so the local endpoint must keep it. Other services (SQS long polls among them)
stay concurrent.
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Iterable
from typing import Any

DYNAMODB_TARGET_PREFIX = "DynamoDB_"  # X-Amz-Target of every DynamoDB API call (JSON protocol)


class SerialDynamoDB:
    """WSGI middleware: DynamoDB calls one at a time, the rest passed through."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith(DYNAMODB_TARGET_PREFIX):
            return self.app(environ, start_response)
        with self.lock:
            result = self.app(environ, start_response)
            try:
                return [b"".join(result)]  # the whole answer is made under the lock
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()


def main(argv: list[str] | None = None) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # as moto_server sets it
    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True  # type: ignore[attr-defined]  # as moto_server: errors answered with their trace
    run_simple(
        args.host,
        args.port,
        SerialDynamoDB(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
