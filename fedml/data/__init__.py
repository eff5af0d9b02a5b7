"""Datasets and partitioners: ``load(args)`` returns a FederatedDataset and its output dimension."""

from fedml.data.custom import ClientSource, from_client_datasets
from fedml.data.dataset import BatchTransform, ClientData, FederatedDataset, RawData
from fedml.data.mnist import load_embedded_mnist, load_mnist, read_idx
from fedml.data.partition import (
    Partitioner,
    partition_labels,
    partition_methods,
    register_partitioner,
    split_test_like_train,
)
from fedml.data.registry import (
    DATASETS,
    ClientDataset,
    DatasetSpec,
    dataset_names,
    input_shape,
    load,
    register_dataset,
    register_federated_dataset,
)
from fedml.data.stats import DataStats, data_stats, stats_table, write_stats
from fedml.data.synthetic import SyntheticDataset

__all__ = [
    "DATASETS",
    "BatchTransform",
    "ClientData",
    "ClientDataset",
    "ClientSource",
    "DataStats",
    "DatasetSpec",
    "FederatedDataset",
    "Partitioner",
    "RawData",
    "SyntheticDataset",
    "data_stats",
    "dataset_names",
    "from_client_datasets",
    "input_shape",
    "load",
    "load_embedded_mnist",
    "load_mnist",
    "partition_labels",
    "partition_methods",
    "read_idx",
    "register_dataset",
    "register_federated_dataset",
    "register_partitioner",
    "split_test_like_train",
    "stats_table",
    "write_stats",
]
