"""What a result depends on besides its inputs: the software versions, and on a CPU the
instruction set torch dispatches to and the thread count (the order of floating-point sums), which
together decide the last bits of a trained prompt or zoo member."""

from __future__ import annotations

import platform
from typing import Any


def versions() -> dict[str, str]:
    import torch

    from . import __version__

    out = {"tvprompt": __version__, "python": platform.python_version(), "torch": torch.__version__}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - a dependency
        pass
    return out


def cpu_platform(threads: int | None = None) -> dict[str, Any]:
    """Machine, CPU capability (e.g. ``AVX512``) and thread count (torch's current one by default)."""
    import torch

    return {"machine": platform.machine(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads() if threads is None else threads}
