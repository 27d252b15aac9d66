"""boto3 clients for every AWS service the platform uses.

Locally the same calls go to a moto server (`moto[server]`), so there is one
code path for tests, the demo and production.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import dagster as dg

from resources import settings

_CLIENTS: dict[tuple, Any] = {}
_LOCK = threading.Lock()


MAX_POOL_CONNECTIONS = 50


class AwsClients(dg.ConfigurableResource):
    """Makes boto3 clients. With `use_local_endpoint` they talk to the local moto server."""

    region_name: str | None = None
    endpoint_url: str | None = None
    use_local_endpoint: bool = False

    def resolved_endpoint(self) -> str | None:
        if self.endpoint_url:
            return self.endpoint_url
        return settings.local_aws_endpoint() if self.use_local_endpoint else None

    def client(self, service: str) -> Any:
        """A client for service, made once per process and settings (making one costs ~0.1-0.3
        CPU-s: botocore loads its service model), and reused: boto3 clients are thread-safe."""
        kwargs: dict[str, Any] = {"region_name": self.region_name or settings.aws_region()}
        endpoint = self.resolved_endpoint()
        if endpoint:
            kwargs["endpoint_url"] = endpoint
            # moto accepts any key; real credentials never go to a local endpoint.
            if not os.environ.get("AWS_ACCESS_KEY_ID"):
                kwargs.update(aws_access_key_id="testing", aws_secret_access_key="testing")
        # The credentials in the environment are part of the key, so a change of them is seen.
        key = (service, os.getpid(), os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"),
               tuple(sorted(kwargs.items())))  # fmt: skip
        with _LOCK:
            client = _CLIENTS.get(key)
            if client is None:
                import boto3  # lazy: keeps boto3 out of the code location's import
                from botocore.config import Config

                # One client serves every thread of a process (the snapshot API's 40); botocore's
                # default pool of 10 connections made the others queue for one.
                config = Config(max_pool_connections=MAX_POOL_CONNECTIONS)
                client = _CLIENTS[key] = boto3.session.Session().client(service, config=config, **kwargs)
        return client
