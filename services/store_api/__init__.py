"""The stores' read API (seed 003): their 30-minute sales windows, served from Redis, history from the
warehouse.

app.py   create_app: FastAPI routes under /v1, bearer-token auth, one JSON error shape
cli.py   `store-api` (uvicorn), for services.cli to register
"""
