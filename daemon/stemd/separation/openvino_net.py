"""HTDemucs' network run by OpenVINO's CPU plugin (model.backend: openvino).

The network (stemd.separation.cutgraph.Network) goes through torch's ONNX
exporter and OpenVINO's converter into OpenVINO's own files (network.xml and
network.bin, weights kept in f32); the ONNX file is a step, not kept. Converted
straight from torch, the same network ran about 15 % slower here than through
ONNX, so the longer way is taken.

Precision is pinned: OpenVINO's CPU plugin picks bf16 by itself on CPUs with
AMX or AVX-512 BF16, which changes the stems; here it computes f32 unless
model.precision asks for bf16.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import openvino as ov
import torch

from stemd.separation.cutgraph import CUT_VERSION, Network

log = logging.getLogger("stemd")

RUNTIME = "openvino"
VERSION = ov.get_version()
XML, BIN = "network.xml", "network.bin"
ONNX_OPSET = 17
# what else made an export (stemd.separation.exports.ExportKey.toolchain): a new
# torch exporter, demucs or cut of the graph makes it again
TOOLCHAIN = (
    f"torch {torch.__version__}, onnx opset {ONNX_OPSET}, demucs "
    f"{importlib.metadata.version('demucs')}, cut {CUT_VERSION}"
)


# one export at a time in a process: the fast-path switch below is process-wide, and
# two exports overlapping would restore it wrongly
_EXPORTING = threading.Lock()


@contextlib.contextmanager
def _exportable() -> Iterator[None]:
    """torch as the exporter needs it: no fused attention kernel (it has no ONNX
    operator), no gradients, the tracer's warnings about Python values kept out of
    the log (the shapes are fixed: that is the point). The switch is torch's, for
    the whole process: a worker whose model torch runs may take the unfused
    attention for the minute an export lasts (the same sums, in another order)."""
    with _EXPORTING:
        enabled = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            torch.backends.mha.set_fastpath_enabled(enabled)


def export_network(network: Network, x: torch.Tensor, xt: torch.Tensor, folder: Path) -> list[str]:
    """Write `network`, traced at the shapes of (x, xt), into `folder` as OpenVINO
    files; returns their names."""
    onnx_path = folder / "network.onnx"
    with _exportable():
        torch.onnx.export(
            network,
            (x, xt),
            str(onnx_path),
            input_names=["x", "xt"],
            output_names=["y", "yt"],
            opset_version=ONNX_OPSET,
            dynamo=False,  # the TorchScript exporter: the dynamo one stops at demucs' asserts
        )
    converted = ov.convert_model(str(onnx_path))
    ov.save_model(converted, str(folder / XML), compress_to_fp16=False)
    onnx_path.unlink()
    return [XML, BIN]


class OpenVinoNetwork:
    """A compiled network: (x, xt) -> (x, xt) as torch tensors, for any batch up to
    the one it was exported at (a shorter batch is padded with zeros)."""

    def __init__(self, xml: Path, threads: int, bf16: bool) -> None:
        core = ov.Core()
        self.compiled = core.compile_model(
            str(xml),
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
                "INFERENCE_NUM_THREADS": str(threads),
                "NUM_STREAMS": "1",
                "PERFORMANCE_HINT": "LATENCY",
                # pinned threads would make two workers of one CPU (or the daemon and
                # a `stemd separate`) share the same cores; unpinned measured the same
                # here alone (1.68-1.70 s a full-size chunk either way)
                "ENABLE_CPU_PINNING": False,
            },
        )
        self.request = self.compiled.create_infer_request()
        self.batch = int(self.compiled.input(0).get_partial_shape()[0].get_length())

    def __call__(self, x: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = x.shape[0]
        if count > self.batch:
            raise ValueError(f"a batch of {count}; this export takes at most {self.batch}")
        if count < self.batch:
            x = torch.cat([x, x.new_zeros((self.batch - count, *x.shape[1:]))])
            xt = torch.cat([xt, xt.new_zeros((self.batch - count, *xt.shape[1:]))])
        self.request.infer({0: x.contiguous().numpy(), 1: xt.contiguous().numpy()})
        y = torch.from_numpy(self.request.get_output_tensor(0).data[:count].copy())
        yt = torch.from_numpy(self.request.get_output_tensor(1).data[:count].copy())
        return y, yt
