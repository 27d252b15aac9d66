"""The CDC domain's processes: the binlog capture and the full load, writing AWS DMS-format files.

capture.py     one binlog reader per cluster -> change files + a checkpoint per cluster
full_load.py   a consistent snapshot of one table -> LOAD files
checkpoint.py  where a cluster's capture got to, kept in the lake
writer.py      change buffers and their Parquet files
source.py      connections to a cluster and its tables' column conversions
"""
