"""The report snapshot engine (issue 11): report definitions and rendering, snapshot ids and their
state in DynamoDB. Dagster's assets and sensor for it are in assets/reports/."""
