"""Budgets and spike alerts: ``llm-usage alerter`` evaluates the rollups and raises alerts.

- :mod:`~stream_processor.alerts.spikes`: the detector, a pure function of hourly series;
- :mod:`~stream_processor.alerts.budgets`: budget periods and threshold crossings (pure);
- :mod:`~stream_processor.alerts.store`: every SQL statement of budgets, alerts, webhooks;
- :mod:`~stream_processor.alerts.webhooks`: signed deliveries with retries;
- :mod:`~stream_processor.alerts.evaluator`: the loop that ties them together.
"""
