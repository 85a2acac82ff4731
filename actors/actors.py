"""The named actors of the server: one per job, one solver, one registry, and render shards.

Jobs, the solver and the registry each get a :class:`~farmhand.actors.runtime.BehaviourActor` of their own
around the core behaviour of the same name. Renders are many (thousands on a big farm, each woken by every
heartbeat of its worker), so :class:`RenderActor` is a :class:`~farmhand.actors.runtime.ShardActor`: a fixed
number of them host every render behaviour between them, by a hash of the render's address. The classes differ
only in name (which shows in thread names and logs), because every decision lives in the behaviour.
"""

from __future__ import annotations

from farmhand.core.job import JobBehaviour
from farmhand.core.registry import Registry
from farmhand.core.render import RenderBehaviour
from farmhand.core.runtime import Behaviour
from farmhand.core.solver import Solver

from .runtime import BehaviourActor, ShardActor


class JobActor(BehaviourActor):
    """Hosts one job's :class:`~farmhand.core.job.JobBehaviour`."""


class RenderActor(ShardActor):
    """Hosts the :class:`~farmhand.core.render.RenderBehaviour` of many renders (a shard of them)."""


class SolverActor(BehaviourActor):
    """Hosts the :class:`~farmhand.core.solver.Solver`."""


class RegistryActor(BehaviourActor):
    """Hosts the job :class:`~farmhand.core.registry.Registry`."""


ACTOR_CLASSES: dict[type, type[BehaviourActor] | type[ShardActor]] = {
    JobBehaviour: JobActor,
    RenderBehaviour: RenderActor,
    Solver: SolverActor,
    Registry: RegistryActor,
}


def actor_class_for(behaviour: Behaviour) -> type[BehaviourActor] | type[ShardActor]:
    """The actor class that hosts ``behaviour`` (the generic one for anything else, e.g. virtual workers); a
    :class:`ShardActor` class means the behaviour shares one of that class's shards."""
    return ACTOR_CLASSES.get(type(behaviour), BehaviourActor)
