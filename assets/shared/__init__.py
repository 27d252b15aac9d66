"""Building blocks the domains share: sensor factories and asset conventions."""
