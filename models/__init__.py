"""The domain, no I/O: wire schemas, customer state and features, segments, forecasts."""
