"""The Events service: resumable `WatchJob` streams fed by per-job Redis streams."""
