"""EDA profiles computed in a real DuckDB warehouse."""

from datetime import date

import pyarrow as pa

from assets.migration.profile import histogram_png, markdown, numeric_columns, profile_table
from resources.warehouse import DuckDBWarehouse


def test_profile_statistics_and_withheld_identifiers(tmp_path):
    warehouse = DuckDBWarehouse(path=str(tmp_path / "wh.duckdb"))
    amounts = [10, 20, 20, None, 40, 20]
    warehouse.load(
        "m.t",
        pa.table(
            {
                "customer_id": [101, 102, 103, 104, 105, 106],
                "name": ["enc:a", "enc:b", "enc:c", None, "enc:e", "enc:f"],
                "amount": amounts,
                "day": [date(2026, 1, d) for d in (1, 2, 2, 3, 3, 3)],
            }
        ),
    )
    total, columns = profile_table(warehouse, "m.t", withhold={"customer_id", "name"})
    by_name = {c.name: c for c in columns}
    assert total == 6
    assert by_name["amount"].null_rate == round(1 / 6, 4)
    assert (by_name["amount"].min, by_name["amount"].max, by_name["amount"].distinct) == (10, 40, 3)
    assert by_name["amount"].top_values[0] == (20, 3)
    assert by_name["day"].top_values[0] == (date(2026, 1, 3), 3)
    # Identifiers: counted, never shown.
    assert by_name["customer_id"].distinct == 6 and by_name["customer_id"].min is None
    assert by_name["name"].top_values == [] and by_name["name"].null_rate == round(1 / 6, 4)
    assert numeric_columns(columns) == ["amount"]

    png = histogram_png(warehouse, "m.t", "amount", 10, 40)
    assert png.startswith(b"\x89PNG")
    text = markdown(total, columns, {"amount": png})
    table_part, image_part = text.split("![amount]")
    assert "101" not in table_part and "enc:a" not in table_part
    assert "| amount | decimal" in table_part or "| amount | int" in table_part
    assert image_part.startswith("(data:image/png;base64,")
