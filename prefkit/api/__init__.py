"""What plugins implement. Plugins import only from here (and `prefkit.errors`).

A tensor method is a pure function of one tensor name across the input models::

    class MyParams(Params):
        scale: float = 1.0

    class MyMethod(TensorMethod):
        name = "my_method"
        summary = "One line shown by `prefkit methods`."
        reference_url = "https://arxiv.org/abs/..."
        Params = MyParams
        ModelParams = WeightParams

        def merge(self, tensors, *, base, params, model_params, info):
            ...

    @hookimpl
    def prefkit_register_methods(register):
        register(MyMethod())
"""

from __future__ import annotations

import pluggy

from prefkit.api.calls import MergeInfo, Scan, ScanItem, SlabRows, TensorInfo
from prefkit.api.learning import (
    Corpus,
    Solution,
    SolveContext,
    SolverMethod,
    SolverSettings,
    TrainerMethod,
    TrainSettings,
)
from prefkit.api.methods import Method, TensorMethod
from prefkit.api.params import NoParams, Params, Scale, WeightParams
from prefkit.api.tasks import Task

hookimpl = pluggy.HookimplMarker("prefkit")

__all__ = ["Corpus", "MergeInfo", "Method", "NoParams", "Params", "Scale", "Scan", "ScanItem", "SlabRows",
           "SolveContext", "Solution", "SolverMethod", "SolverSettings", "Task", "TensorInfo",
           "TensorMethod", "TrainSettings", "TrainerMethod", "WeightParams", "hookimpl"]
