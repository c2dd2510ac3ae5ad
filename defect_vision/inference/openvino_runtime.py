"""OpenVINO (CPU plugin) runs the `defect-vision export` ONNX files behind onnxruntime's `run(None, feed)`, so the
exported-model backend (onnx_backend.py) takes either runtime. OpenVINO reads the .onnx files itself: no
conversion step, nothing written."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from defect_vision.errors import DatasetError

# The first `infer` of a request fills its input tensor through OpenVINO's Python module, whose one-time numpy
# set-up deadlocks when two threads reach it at once (it waits for the GIL while holding its own guard): every
# request's first call, in any session of the process, goes through this lock; later calls run freely.
FIRST_CALL = threading.Lock()


class OpenVinoSession:
    """A compiled model and one infer request per calling thread (model workers call it at once)."""

    def __init__(self, compiled):
        self.compiled = compiled
        self.local = threading.local()
        self.input_names = [i.get_any_name() for i in compiled.inputs]

    def run(self, _outputs: None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """All outputs, in the model's order (onnxruntime's `sess.run(None, feed)`); copies, not views."""
        request = getattr(self.local, "request", None)
        if request is None:
            with FIRST_CALL:
                request = self.compiled.create_infer_request()
                result = request.infer(feed, share_outputs=False)
            self.local.request = request
        else:
            result = request.infer(feed, share_outputs=False)
        return [result[o] for o in self.compiled.outputs]


def openvino_session(path: Path, threads: int, bf16: bool = False, streams: int = 1) -> OpenVinoSession:
    """`path` compiled for the CPU with `streams` streams (one per model worker) of `threads` threads each, in fp32
    (OpenVINO's own default is bf16 on CPUs that have it; fp32 keeps the outputs those of torch), or bf16 when
    asked; a one-line DatasetError when OpenVINO cannot read or compile it."""
    import openvino as ov

    core = ov.Core()
    config = {"NUM_STREAMS": int(streams), "INFERENCE_NUM_THREADS": int(threads) * int(streams), "ENABLE_CPU_PINNING": False,
              "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32"}
    try:
        compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError/GeneralFailure with multi-line text
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.startswith("Check ")]
        why = lines[-1] if lines else type(exc).__name__
        raise DatasetError(f"{path}: openvino {ov.__version__} cannot load it: {why[:200]}") from None
    return OpenVinoSession(compiled)
