"""currydpo: Curry-DPO — curriculum learning over several ranked preference pairs per prompt.

``from currydpo import TrainConfig, load_records, build_pairs, plan_stages, train, evaluate, compare``.
Names are imported on first use, so ``import currydpo`` (and the CLI's start-up) stays light.
"""

__version__ = "0.1.0"

_PUBLIC = {
    "TrainConfig": "currydpo.config",
    "load_config": "currydpo.config",
    "Record": "currydpo.data.records",
    "Response": "currydpo.data.records",
    "build_pairs": "currydpo.data.pairs",
    "as_config": "currydpo.api",
    "load_records": "currydpo.api",
    "Plan": "currydpo.api",
    "plan_stages": "currydpo.api",
    "train": "currydpo.api",
    "evaluate": "currydpo.api",
    "compare": "currydpo.api",
    "CurryError": "currydpo.errors",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'currydpo' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later look-ups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
