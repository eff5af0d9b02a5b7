"""Secure aggregation (Bonawitz et al. 2017; SecAgg+ of Bell et al. 2020): the server learns only the sum.

The protocol core, independent of any transport: ``SecAggClient`` and ``SecAggServer`` are state
machines over four stages whose messages travel as ``Message``s through the normal codec;
``run_secagg_round`` runs a whole round in one process. ``field`` documents the ring, the quantization
and its error bound; ``settings`` the keys of ``secure_aggregation_args``. ``fedml.core.round.secure``
runs it in the round (sp, MPI, cross-silo).
"""

from fedml.core.privacy.secagg.client import SecAggClient
from fedml.core.privacy.secagg.field import sum_bound
from fedml.core.privacy.secagg.messages import STAGES
from fedml.core.privacy.secagg.server import SecAggServer
from fedml.core.privacy.secagg.settings import SecAggArgs
from fedml.core.privacy.secagg.simulation import Transcript, run_secagg_round
from fedml.core.privacy.secagg.state import StateSpec, flatten_state, unflatten

__all__ = [
    "STAGES",
    "SecAggArgs",
    "SecAggClient",
    "SecAggServer",
    "StateSpec",
    "Transcript",
    "flatten_state",
    "run_secagg_round",
    "sum_bound",
    "unflatten",
]
