"""`make bench`: measurements printed as tables, never asserted."""
