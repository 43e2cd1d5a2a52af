"""compile: torch.compile the denoiser, whole (`nn.Module.compile`) or regionally (`compile_repeated_blocks`).

Compiling in place cannot be undone and a new resolution recompiles, so a profile is tied to its height and width,
and a tuner starts the next trial from a fresh pipeline after a compiled one.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Literal

from autotune.hardware import has_c_compiler
from autotune.pipelines import denoiser

from ._base import Knob, register, value_of

MODES = ["none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
_COMPILED = frozenset(MODES[1:])


@register
class Compile(Knob):
    name = "compile"
    help = "torch.compile mode for the denoiser (none: eager)"
    annotation = Literal["none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
    default = "none"
    stage = "compile"
    after = ("placement",)
    reversible = False

    def choices(self):
        return list(MODES)

    def unavailable(self, value, hw, pipe=None):
        if value == "none":
            return None
        if hw.device == "cpu" and not has_c_compiler():
            return "torch.compile's inductor needs a C++ compiler (g++) on CPU"
        if hw.device == "cuda" and importlib.util.find_spec("triton") is None:
            return "torch.compile's inductor needs triton on CUDA"
        return None

    def caveat(self, value, hw):
        if value == "reduce-overhead" and hw.device == "cpu":
            return "CUDA graphs are CUDA-only; on CPU this mode behaves like default"
        return None

    def apply(self, pipe, value, settings, hw):
        if value == "none":
            return
        net = denoiser(pipe)
        fullgraph = bool(value_of(settings, "compile_fullgraph"))
        scope = value_of(settings, "compile_scope")
        kwargs = {"mode": None if value == "default" else value, "fullgraph": fullgraph}
        if scope == "regional":
            net.compile_repeated_blocks(**kwargs)
        else:
            net.compile(**kwargs)

    def read(self, pipe):
        return compiled_state(pipe).get("compile", "none")


def compiled_state(pipe) -> dict:
    """What torch holds compiled in the denoiser, and with which options: {} when nothing is compiled.

    Read from the compiled modules themselves: the scope from which modules are compiled, the mode from the inductor
    options torch keeps (matched against `torch._inductor.list_mode_options`), fullgraph from dynamo's context.
    """
    net = denoiser(pipe)
    compiled = [m for m in net.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    if not compiled:
        return {}
    context = _dynamo_context(compiled[0]._compiled_call_impl)
    options = _inductor_options(context)
    modes = [mode for mode in MODES[1:] if options is not None and _mode_options(mode) == options]
    return {
        "compile": modes[0] if modes else None,
        "compile_fullgraph": getattr(context, "fullgraph", None),
        "compile_scope": "denoiser" if compiled == [net] else "regional",
    }


def _dynamo_context(compiled_call):
    # torch.compile(fn) returns a wrapper closing over dynamo's OptimizeContext, which keeps `fullgraph` and the
    # backend; torch has no public reader for them. Missing pieces read as None, which fails the knob's contract test.
    closure = inspect.getclosurevars(compiled_call).nonlocals if inspect.isfunction(compiled_call) else {}
    return closure.get("self")


def _inductor_options(context) -> dict | None:
    backend = getattr(getattr(context, "callback", None), "_torchdynamo_orig_backend", None)
    while backend is not None and not hasattr(backend, "config"):
        backend = getattr(backend, "_torchdynamo_orig_backend", None)
    return None if backend is None else dict(backend.config)


def _mode_options(mode: str) -> dict:
    from torch._inductor import list_mode_options

    return dict(list_mode_options(mode))


@register
class CompileFullgraph(Knob):
    name = "compile_fullgraph"
    help = "fail on graph breaks instead of running them eagerly"
    annotation = bool
    default = False
    stage = "compile"
    parent = ("compile", _COMPILED)

    def choices(self):
        return [False, True]

    def read(self, pipe):
        return compiled_state(pipe).get("compile_fullgraph", False)


@register
class CompileScope(Knob):
    name = "compile_scope"
    help = "denoiser: compile the whole model; regional: compile its repeated blocks (much faster to compile)"
    annotation = Literal["denoiser", "regional"]
    default = "denoiser"
    stage = "compile"
    parent = ("compile", _COMPILED)

    def choices(self):
        return ["denoiser", "regional"]

    def unavailable(self, value, hw, pipe=None):
        if value == "regional" and pipe is not None and not getattr(denoiser(pipe), "_repeated_blocks", None):
            return f"{type(denoiser(pipe)).__name__} declares no repeated blocks for compile_repeated_blocks"
        return None

    def read(self, pipe):
        return compiled_state(pipe).get("compile_scope", "denoiser")
