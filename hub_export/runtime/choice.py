"""What a model runs on in `embed` and `serve`: a backend and weight quantization, ``auto`` resolved for this CPU.

The default is the exact model (``--backend torch --quantization none``): stored vectors and vectors
encoded with ``SentenceTransformer`` agree. ``auto`` (opt-in) picks, for a combined model folder, the
fastest path measured on this kind of CPU (docs/speed.md): the parts' ONNX Runtime int8 files for
this CPU's family when the folder has them (``concat-embed export-backends --int8``) and onnxruntime is installed, else
torch with dynamic int8 weights on a CPU with an int8 family (AVX2, AVX-512, VNNI, ARM64), else
plain torch. On a CUDA machine, and for models that are not combined models (any
sentence-transformers model can be served), ``auto`` keeps the model's own weights on torch.
``none`` (or ``torch`` for the backend) asks for the exact model.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub_export.folder import part_folders

BACKEND_CHOICES = ("auto", "torch", "onnx", "openvino")
QUANTIZATION_CHOICES = ("auto", "none", "int8-dynamic")


@dataclass(frozen=True)
class Runtime:
    """A choice to load with: ``backend`` (torch | onnx | openvino) and ``quantization`` (None | auto | int8-dynamic).

    ``auto`` quantization is resolved by the model itself when it loads (``modeling.ConcatEmbedding``:
    this CPU's int8 file, or torch's dynamic int8 where the CPU has an int8 family); :func:`loaded_label`
    reports what it chose.
    """

    backend: str = "torch"
    quantization: str | None = None

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``SentenceTransformer(...)``."""
        model_kwargs = {"model_kwargs": {"quantization": self.quantization}} if self.quantization else {}
        return {"backend": self.backend} | model_kwargs


def loaded_label(model: Any) -> str:
    """What a loaded model runs on: ``torch``, ``torch+int8-dynamic``, ``onnx:onnx/model_quint8_avx2.onnx``."""
    module = model[0]
    backend = getattr(module, "backend", "torch")
    if backend != "torch":
        return f"{backend}:{module.backend_file}"
    quantization = getattr(module, "quantization", None)
    return f"torch+{quantization}" if quantization else "torch"


def choose_runtime(model: str, backend: str = "torch", quantization: str = "none") -> Runtime:
    """Resolve the CLI's ``--backend`` and ``--quantization`` for ``model`` on this machine.

    Raises:
        ValueError: For an unknown choice (valid ones listed), or a backend / quantization asked for
            a model that is not a local combined model folder.
    """
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"backend {backend!r}: expected one of {list(BACKEND_CHOICES)}")
    if quantization not in QUANTIZATION_CHOICES:
        raise ValueError(f"quantization {quantization!r}: expected one of {list(QUANTIZATION_CHOICES)}")
    parts = part_folders(model)
    if parts is None:  # not a local combined model: only what sentence-transformers itself understands
        if quantization == "int8-dynamic" or backend in ("onnx", "openvino"):
            raise ValueError(
                f"backend {backend!r} with quantization {quantization!r} needs a local combined model folder; "
                f"{model!r} is not one (use --backend auto --quantization none)"
            )
        return Runtime()
    import torch

    from hub_export.modeling import ONNX_INT8_FILES, cpu_family

    if backend == "auto":
        int8_file = ONNX_INT8_FILES.get(cpu_family() or "")
        ready = bool(int8_file) and all((Path(model) / part / int8_file).is_file() for part in parts)
        onnx = ready and importlib.util.find_spec("onnxruntime") is not None and not torch.cuda.is_available()
        backend = "onnx" if onnx and quantization == "auto" else "torch"
    return Runtime(backend, None if quantization == "none" else quantization)


def cpu_summary() -> str:
    """The CPU a measurement ran on: model name, cores, torch's capability level, int8 family, bf16, ISA flags."""
    import torch

    from hub_export.modeling import cpu_family, cpu_flags, native_bf16

    flags = cpu_flags()
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        info = []
    name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), platform.machine())
    shown = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni")) or f in ("avx2", "fma", "f16c"))
    return (
        f"CPU {name}, {os.cpu_count()} cores; torch capability {torch.backends.cpu.get_cpu_capability()}, "
        f"int8 family {cpu_family(flags)}, native bf16 {native_bf16(flags)}; flags {' '.join(shown) or '-'}"
    )
