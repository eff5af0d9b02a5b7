"""The shared core: algorithms, aggregation, sampling, the round, and the customization base classes.

``fedml.core.ClientTrainer`` and ``fedml.core.ServerAggregator`` are the classes of ``fedml.ml``,
re-exported lazily so that ``fedml.ml`` can itself build on ``fedml.core`` modules.
"""

from typing import Any

__all__ = ["ClientTrainer", "ServerAggregator"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        import fedml.ml

        return getattr(fedml.ml, name)
    raise AttributeError(f"module 'fedml.core' has no attribute {name!r}")
