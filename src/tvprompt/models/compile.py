"""Regional ``torch.compile`` of the repeated transformer blocks of a frozen model (opt-in).

A prompt-training step on a 7B MLLM is CPU-dispatch bound at the batch sizes TVP uses: some 80
transformer blocks, forward and backward, each launching dozens of small kernels through Python
and autograd. Compiling every block fuses those kernels. Compiling the *blocks* rather than the
whole model ("regional compilation", what PyTorch recommends for transformers) keeps compile time
low, because every layer of a stack runs the same code and shares one compiled graph, and leaves
the parts that do not compile well (image-token scattering, Python control flow in the top-level
HF ``forward``, KV-cache bookkeeping) eager.

- :func:`repeated_stacks` finds the stacks: every ``nn.ModuleList`` of at least two children of
  one class (vision-encoder layers, Q-Former layers, LLM decoder layers, T5 blocks, ...), outermost
  first; lists nested inside an already found block are left alone. :func:`repeated_blocks` lists
  their blocks.
- :func:`compile_blocks` compiles each block's ``forward`` in place. Module hooks (transformers'
  output capturing, tvprompt's FCA feature capture) stay outside the compiled region.
- :func:`eager` runs compiled code eagerly for the duration of a ``with`` block. The adapters use
  it for ``score_choices`` and ``generate``: with a KV cache passed through every decoder layer,
  each decoding step changes the cache's shapes and strides, so compiled layers would recompile
  until dynamo's recompile limit and then fall back to eager anyway.

Text batches of different lengths must not recompile every step: blocks are compiled with
``dynamic=True`` by default (symbolic sequence and batch sizes from the first call). A size of 1,
or one that happens to equal a fixed size of the model (say 32 tokens and 32 query tokens), is
specialised on the first call; the first batch with another size then recompiles that stack once
with the size symbolic, and later lengths reuse it (tested on every family's tiny model). Mode
``reduce-overhead`` adds CUDA graphs, which record one graph per distinct input shape; callers pad
text to a multiple (see ``HFAdapter.compile``) so that the number of shapes stays small.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import UsageError

log = logging.getLogger(__name__)

COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
# dynamo keeps at most this many compiled variants per code object; every block class of every
# model compiled in one process shares the few ``forward`` wrappers transformers defines, so the
# default (8) is reached by an ensemble plus a guide. Raised once, never lowered.
RECOMPILE_LIMIT = 64


def check_mode(mode: str, field: str = "compile") -> str:
    """``mode`` if it is one of :data:`COMPILE_MODES`, else a one-line UsageError naming ``field``."""
    if mode not in COMPILE_MODES:
        raise UsageError(f"field '{field}': {mode!r} is not one of {', '.join(COMPILE_MODES)}")
    return mode


def repeated_stacks(model: torch.nn.Module) -> list[torch.nn.ModuleList]:
    """Every ``nn.ModuleList`` of >= 2 modules of one class, outermost first; lists inside a block of an
    earlier stack are left out (they are compiled as part of that block)."""
    stacks: list[torch.nn.ModuleList] = []
    inside: set[int] = set()  # ids of modules within a found block
    for module in model.modules():  # pre-order: a list is met before the modules inside it
        if id(module) in inside or not isinstance(module, torch.nn.ModuleList) or len(module) < 2:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        stacks.append(module)
        inside.update(id(m) for child in module for m in child.modules())
    return stacks


def repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks of :func:`repeated_stacks`, in order."""
    return [block for stack in repeated_stacks(model) for block in stack]


def compile_blocks(model: torch.nn.Module, mode: str = "default", dynamic: bool | None = True) -> int:
    """Compile the forward of each of ``model``'s repeated blocks in place; returns how many.

    ``mode`` is a ``torch.compile`` mode (``off`` compiles nothing). ``dynamic=True`` (default) traces
    sequence and batch sizes symbolically, so a batch of another text length reuses the graph;
    ``None`` is torch's own choice (static first, dynamic after the first size change).
    Compiling twice is a no-op for blocks already compiled.
    """
    check_mode(mode, "mode")
    if mode == "off":
        return 0
    _raise_recompile_limit()
    count = 0
    for block in repeated_blocks(model):
        if getattr(block, "_tvp_compiled", None) is not None:
            count += 1
            continue
        options: dict[str, Any] = {"dynamic": dynamic}
        if mode != "default":
            options["mode"] = mode
        _quiet_on_first_call(block)
        block.forward = torch.compile(block.forward, **options)  # instance attribute: its own hooks stay outside
        block._tvp_compiled = mode
        count += 1
    log.info("compiled %d blocks of %s (mode %s, dynamic %s)", count, type(model).__name__, mode, dynamic)
    return count


def compiled_mode(model: torch.nn.Module) -> str | None:
    """The mode ``compile_blocks`` compiled ``model``'s blocks with, or None."""
    for block in repeated_blocks(model):
        mode = getattr(block, "_tvp_compiled", None)
        if mode is not None:
            return mode
    return None


@contextlib.contextmanager
def eager(enabled: bool = True) -> Iterator[None]:
    """Run every ``torch.compile``-d function eagerly inside the block (no compiling, no recompiles)."""
    if not enabled:
        yield
        return
    with torch.compiler.set_stance("force_eager"):
        yield


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < RECOMPILE_LIMIT:
            setattr(config, name, RECOMPILE_LIMIT)


def _quiet_on_first_call(block: torch.nn.Module) -> None:
    """Run :func:`_quiet_inner_hooks` once, just before ``block``'s first call (eager, outside the compiled
    region). transformers installs its output-capturing hooks lazily, on the first forward that asks
    for hidden states, so they exist by then; hooks installed even later only cost graph breaks."""

    def pre_hook(module: torch.nn.Module, args: Any) -> None:
        _quiet_inner_hooks(module)
        handle.remove()

    handle = block.register_forward_pre_hook(pre_hook)


def _quiet_inner_hooks(block: torch.nn.Module) -> None:
    """Make transformers' attention-capturing hooks on modules *inside* ``block`` no-ops in compiled code.

    Such a hook reads a ``ContextVar`` (which dynamo cannot trace), so it would split every block's
    graph in two. tvprompt never asks for attention maps, and eager code (``score_choices``,
    ``generate``, anything under :func:`eager`) still runs them. Hidden-state hooks (on the block
    itself, outside the compiled ``forward``) are left as they are.
    """
    for module in block.modules():
        if module is block:
            continue
        for handle_id, hook in list(module._forward_hooks.items()):
            if (getattr(hook, "__module__", "") != "transformers.utils.output_capturing"
                    or getattr(hook, "_tvp_quiet", False)):
                continue
            if _closure_value(hook, "key") == "hidden_states":
                continue
            module._forward_hooks[handle_id] = _eager_only(hook)


def _eager_only(hook: Any) -> Any:
    def quiet_hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        if torch.compiler.is_compiling():
            return None
        return hook(module, args, output)

    quiet_hook._tvp_quiet = True  # type: ignore[attr-defined]
    return quiet_hook


def _closure_value(fn: Any, name: str) -> Any:
    code, cells = getattr(fn, "__code__", None), getattr(fn, "__closure__", None) or ()
    if code is None or name not in code.co_freevars:
        return None
    return cells[code.co_freevars.index(name)].cell_contents
