"""The ingest service: POST /v1/events and OTLP /v1/traces, beside the query API."""
