"""boto3 clients for every AWS service the platform uses.

Locally the same calls go to a moto server (`moto[server]`), so there is one
code path for tests, the demo and production.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from resources import settings


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
        import boto3  # lazy: keeps boto3 out of the code location's import

        kwargs: dict[str, Any] = {"region_name": self.region_name or settings.aws_region()}
        endpoint = self.resolved_endpoint()
        if endpoint:
            kwargs["endpoint_url"] = endpoint
            # moto accepts any key; real credentials never go to a local endpoint.
            if not os.environ.get("AWS_ACCESS_KEY_ID"):
                kwargs.update(aws_access_key_id="testing", aws_secret_access_key="testing")
        return boto3.session.Session().client(service, **kwargs)
