"""Customization points: ``ClientTrainer`` (local training) and ``ServerAggregator`` (aggregation, test)."""

from fedml.ml.aggregator import ServerAggregator
from fedml.ml.evaluation import evaluate
from fedml.ml.trainer import ClientTrainer

__all__ = ["ClientTrainer", "ServerAggregator", "evaluate"]
