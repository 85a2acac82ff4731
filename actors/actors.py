"""The named actors of the server: one per job, one per render, one solver, one registry.

Each is a :class:`~farmhand.actors.runtime.BehaviourActor` around the core behaviour of the same name; they
differ only in name (which shows in thread names and logs), because every decision lives in the behaviour.
"""

from __future__ import annotations

from farmhand.core.job import JobBehaviour
from farmhand.core.registry import Registry
from farmhand.core.render import RenderBehaviour
from farmhand.core.runtime import Behaviour
from farmhand.core.solver import Solver

from .runtime import BehaviourActor


class JobActor(BehaviourActor):
    """Hosts one job's :class:`~farmhand.core.job.JobBehaviour`."""


class RenderActor(BehaviourActor):
    """Hosts one render's :class:`~farmhand.core.render.RenderBehaviour`."""


class SolverActor(BehaviourActor):
    """Hosts the :class:`~farmhand.core.solver.Solver`."""


class RegistryActor(BehaviourActor):
    """Hosts the job :class:`~farmhand.core.registry.Registry`."""


ACTOR_CLASSES: dict[type, type[BehaviourActor]] = {
    JobBehaviour: JobActor,
    RenderBehaviour: RenderActor,
    Solver: SolverActor,
    Registry: RegistryActor,
}


def actor_class_for(behaviour: Behaviour) -> type[BehaviourActor]:
    """The actor class that hosts ``behaviour`` (the generic one for anything else, e.g. virtual workers)."""
    return ACTOR_CLASSES.get(type(behaviour), BehaviourActor)
