"""The three label-backend registries (depth, tracker, flow) seen as one, for code that plans or
describes labeling without building a backend.

    backend_class(kind, name, params)     the class the registry builds for (name, params)
    loads_model(kind, name, params)       whether building it loads a model: the class declares it
                                          (`loads_model`); engines ask this to decide where labeling
                                          runs, the dataset card never needs to
    effective_params(kind, name, params)  params with the constructor's defaults filled in, so two
                                          configs that build the same backend compare equal

kind is a LabelConfig field: "depth", "tracker" or "flow".
"""

from __future__ import annotations

import inspect
from typing import Optional

KINDS = ("depth", "tracker", "flow")


def backend_class(kind: str, name: str, params: Optional[dict] = None) -> type:
    """The class registered for `name` in the `kind` registry (ValueError naming the choices)."""
    if kind == "depth":
        from labelers.depth import depth_class

        return depth_class(name)
    if kind == "tracker":
        from labelers.tracking.registry import built_class

        return built_class(name, params or {})
    if kind == "flow":
        from labelers.flow import flow_class

        return flow_class(name)
    raise ValueError(f"unknown backend kind {kind!r}; choose one of {KINDS}")


def loads_model(kind: str, name: str, params: Optional[dict] = None) -> bool:
    """Whether the backend (name, params) of `kind` loads a model when built."""
    return bool(backend_class(kind, name, params).loads_model)


def effective_params(kind: str, name: str, params: Optional[dict] = None) -> dict:
    """`params` over the defaults of the backend's constructor (and of the base constructors a
    `**kwargs` hands on to)."""
    out: dict = {}
    for cls in backend_class(kind, name, params).__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        sig = inspect.signature(init)
        for p in sig.parameters.values():
            if p.name != "self" and p.default is not p.empty:
                out.setdefault(p.name, p.default)
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            break
    return {**out, **(params or {})}
