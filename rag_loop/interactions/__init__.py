"""Questions answered and logged (ask) and explained later (lineage)."""
