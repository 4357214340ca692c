"""Benchmarks beside torch: what they time (``workload``: ops, shapes, inputs, the bytes a loss
or a softmax must move), the machine they time it on (``machine``: synchronising, copy bandwidth, extra memory,
settings), the paired rounds under pytest-benchmark (``rounds``) and the vocab-parallel ranks
beside one process (``ranks``). The statistics of the pairs are ``conformance.paired``'s."""
from .machine import SETTINGS, copy_bandwidth, machine_info, synchronize
from .workload import (
                       ACCELERATOR_SHAPES,
                       CPU_SHAPES,
                       LARGE_SHAPE,
                       LINEAR_ACCELERATOR_SHAPES,
                       LINEAR_CPU_SHAPES,
                       LINEAR_OPS,
                       OPS,
                       SOFTMAX_OPS,
                       inputs,
                       linear_inputs,
                       linear_shapes_for,
                       linear_traffic_bytes,
                       shapes_for,
                       softmax_traffic_bytes,
                       traffic_bytes,
)

__all__ = ["OPS", "ACCELERATOR_SHAPES", "CPU_SHAPES", "LARGE_SHAPE", "shapes_for", "synchronize", "inputs",
           "LINEAR_OPS", "LINEAR_CPU_SHAPES", "LINEAR_ACCELERATOR_SHAPES", "linear_shapes_for", "linear_inputs",
           "linear_traffic_bytes", "traffic_bytes", "SOFTMAX_OPS", "softmax_traffic_bytes",
           "copy_bandwidth", "machine_info", "SETTINGS"]
