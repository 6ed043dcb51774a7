"""The orchestrated pipeline around the ``hamu`` library: Prefect tasks (``hamu_pipeline.tasks``, the
deletion batch's stages among them), flows and the ``hamu`` command (``hamu_pipeline.flows``), and the
Great Expectations suites the validation runs (``hamu_pipeline/expectations``, shipped as package data)."""
