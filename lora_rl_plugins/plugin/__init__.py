"""The ground floor: hook specifications, events, the typed plugin host, metric descriptions, collectives.

Nothing here imports a framework or another room of the package.
"""

from .collective import Collective, SingleProcess, TensorCollective
from .events import (
    Action,
    AdaptedMatrix,
    AdapterReady,
    AdapterSummary,
    PolicySample,
    RolloutsScored,
    RunStarted,
    SetKLPenalty,
    StepEnded,
    StopTraining,
)
from .hookspecs import hookimpl, hookspec
from .host import PluginHost, PluginRegistrationError, TrainerRequests, build_plugin_manager
from .metrics import MetricInfo

__all__ = [
    "Action",
    "AdaptedMatrix",
    "AdapterReady",
    "AdapterSummary",
    "Collective",
    "MetricInfo",
    "PluginHost",
    "PluginRegistrationError",
    "PolicySample",
    "RolloutsScored",
    "RunStarted",
    "SetKLPenalty",
    "SingleProcess",
    "StepEnded",
    "StopTraining",
    "TensorCollective",
    "TrainerRequests",
    "build_plugin_manager",
    "hookimpl",
    "hookspec",
]
