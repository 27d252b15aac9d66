"""Report snapshots: requests from SQS, one dynamic partition per snapshot, rendered once."""
