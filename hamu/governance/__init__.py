"""Governance: what makes an erasure accountable rather than only computed.

The request queue (``requests``), the keyed audit ledger, receipts and reports (``audit``), the
unlearn-or-retrain gate (``decision``), erasure lineage (``lineage``), cumulative drift (``drift``), the one
verdict on a candidate's evidence (``verdict``) and the promotion rules (``promotion``). It reads the
evaluation's reports and the hardness assessment; the math core and the ML layer never import it.
No Prefect, MLflow or GX here either: the orchestration above (``tasks``, ``flows``) wires it to them.
"""
