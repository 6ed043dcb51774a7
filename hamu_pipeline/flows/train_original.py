"""Train (if absent) and register the preset's original model as ``champion``: the first model a
deployment serves, and the recipe every retrained reference copies."""

from __future__ import annotations

from prefect import flow

from hamu_pipeline.tasks.env import configure_environment


@flow(name="train-original")
def train_original(preset: str = "fashion-mnist-cpu", model_name: str | None = None) -> dict[str, str]:
    paths = configure_environment()
    from hamu_pipeline.tasks.models import ensure_champion, load_preset_data
    from hamu_pipeline.tasks.tracking import ensure_experiment

    ensure_experiment(paths)
    data = load_preset_data(preset)
    name = model_name or f"hamu-{preset}"
    served = ensure_champion(paths, data, name)
    return {"model_name": served.name, "version": served.version}
