"""Store sales every 30 minutes (seed 003): per-store windows in the warehouse, the latest 48 h in Redis.

serving.py   publish_window writes a window into Redis atomically; read_latest / read_range / read_top
             read it back (services.store_api serves them to stores)
"""
