"""Prefect tasks: thin, typed wrappers between the hamu library and GX, MLflow, the queue, the ledger."""
