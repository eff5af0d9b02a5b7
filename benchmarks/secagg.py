"""Per-round cost of secure aggregation (SecAgg, SecAgg+) against plain summation, measured in one run.

Each client holds a 100k-parameter float32 update and a weight. *Plain*: every client encodes its
update and weight as one ``Message``; the server decodes them and sums the weighted updates. *SecAgg*
and *SecAgg+*: the four stages of ``run_secagg_round`` with real cryptography, every message through
the codec. Client compute is the mean over clients of the time spent in that client's protocol steps
and its encoding and decoding; server compute is the server's, likewise; bytes on the wire are the
encoded sizes of every message of the aggregation (the model broadcast, the same in all three, is not
counted). Ratios are to plain summation in the same run (its best of three passes after a warm-up);
everything runs on one thread. Run from the repository root::

    python benchmarks/secagg.py            # 10, 50, 100 and 500 clients
    python benchmarks/secagg.py --quick    # 10 and 50 clients, under a minute
"""

from __future__ import annotations

import argparse
import time

import torch

from fedml.core.comm import codec
from fedml.core.comm.message import Message, MessageKind
from fedml.core.privacy.secagg import SecAggArgs, run_secagg_round


def plain_round(vectors: dict[str, torch.Tensor], weights: dict[str, float]) -> tuple[float, float, int]:
    """Return (mean client seconds, server seconds, bytes) of plain weighted summation."""
    client_seconds, server_seconds, nbytes = 0.0, 0.0, 0
    total = torch.zeros_like(next(iter(vectors.values())), dtype=torch.float64)
    weight = 0.0
    for client, vector in vectors.items():
        start = time.perf_counter()
        message = Message(
            MessageKind.CLIENT_UPDATE, client, "server", 0, {"weight": weights[client]}, {"update": vector}
        )
        data = codec.encode(message)
        middle = time.perf_counter()
        received = codec.decode(data)
        total.add_(received.tensors["update"], alpha=received.metadata["weight"])
        weight += received.metadata["weight"]
        end = time.perf_counter()
        client_seconds += middle - start
        server_seconds += end - middle
        nbytes += len(data)
    return client_seconds / len(vectors), server_seconds, nbytes


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 and 50 clients only")
    parser.add_argument("--clients", type=int, nargs="*", help="client counts (default 10 50 100 500)")
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--dropout", type=float, default=0.0, help="fraction dropping after sharing keys")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    # Each party is one process on one core; torch's thread pool only adds contention at this size.
    torch.set_num_threads(1)
    counts = options.clients or ([10, 50] if options.quick else [10, 50, 100, 500])
    print(
        f"{options.params} parameters, float32; {options.dropout:.0%} of clients drop after sharing keys; "
        f"seed {options.seed}; one thread\n"
    )
    print("| clients | method | k | client s | server s | MB on wire | client x | server x | bytes x |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in counts:
        gen = torch.Generator().manual_seed(options.seed)
        vectors = {f"c{i:04d}": torch.randn(options.params, generator=gen) * 0.1 for i in range(n)}
        weights = {c: float(100 + i) for i, c in enumerate(vectors)}
        # Plain summation is fast enough for timer noise to matter: a warm-up pass, then the best of three.
        passes = [plain_round(vectors, weights) for _ in range(4)][1:]
        base_client, base_server = min(p[0] for p in passes), min(p[1] for p in passes)
        base_bytes = passes[0][2]
        megabytes = base_bytes / 1e6
        print(f"| {n} | plain | - | {base_client:.4f} | {base_server:.3f} | {megabytes:.1f} | 1 | 1 | 1 |")
        dropped = list(vectors)[: int(options.dropout * n)]
        for method in ("secagg", "secagg_plus"):
            settings = SecAggArgs(enable_secure_aggregation=True, sa_method=method)
            _, _, transcript = run_secagg_round(
                vectors, weights, settings, drop_after_share=dropped, seed=options.seed, keep_messages=False
            )
            client = sum(transcript.client_seconds.values()) / n
            server = transcript.server_seconds
            nbytes = transcript.bytes_on_wire
            print(
                f"| {n} | {method} | {settings.degree(n)} | {client:.4f} | {server:.3f} | {nbytes / 1e6:.1f} "
                f"| {client / base_client:.0f} | {server / base_server:.1f} | {nbytes / base_bytes:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
