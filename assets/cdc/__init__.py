"""MySQL change data capture: binlog -> DMS-format change files -> warehouse history and current state."""
