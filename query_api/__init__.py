"""FastAPI application serving the usage dashboard: aggregations, records and the page."""
