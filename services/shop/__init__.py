"""The operational shop database (seed 003's stores) and its live order traffic.

schema.py   ensure_shop_schema: stores, products, orders, order_items, payments, refunds in MariaDB,
            stores and a product catalog seeded
traffic.py  run_shop_traffic: open-loop orders with items, payments, cancellations and late refunds;
            late_refund: a refund of an old order, now
cli.py      `dp shop-traffic`
"""
