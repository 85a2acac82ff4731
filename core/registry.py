"""The job registry: accepts parsed jobs, gives them ids, resolves job-on-job dependencies, routes actions.

A submission is checked against what only the registry knows (the ids and names of other jobs); a refused
job leaves no trace. An accepted job gets the next id, a job behaviour is spawned for it, and it is told
which jobs it waits on: the ``depends_on_jobs`` ids plus, as of submission, every other job not yet done
whose name fully matches ``depend_mask`` (same user) or ``depend_mask_global`` (any user). Taking the mask
matches at submission keeps two jobs from ever waiting on each other. A deleted upstream releases its
dependents, as a done one does.

A server restoring from its store re-submits each job with its fixed id, its original submission time and
its tasks' lasting states; the registry hands those to the new job (``RestoreTasks``) before starting it.
"""

from __future__ import annotations

import re

from .job import JobBehaviour
from .messages import (
    ActionRefused,
    ClaimRefused,
    JobAccepted,
    JobAction,
    JobDependencyMet,
    JobQuery,
    JobRefused,
    JobStateChanged,
    Message,
    ReclaimRun,
    RestoreTasks,
    StartJob,
    SubmitJob,
)
from .runtime import SOLVER, Context, Handler, MessageRouter, job_address, render_address


class JobEntry:
    """What the registry keeps of a job: enough to resolve dependencies and route actions."""

    __slots__ = ("deleting", "done", "job_id", "name", "state", "user", "waiters")

    def __init__(self, job_id: int, name: str, user: str) -> None:
        self.job_id = job_id
        self.name = name
        self.user = user
        self.state = "active"
        self.done = False
        self.deleting = False  # a delete by someone allowed to was sent: the job stops once it has it
        self.waiters: set[int] = set()


class Registry(MessageRouter):
    """The registry behaviour (one per farm)."""

    def __init__(self, first_job_id: int = 1) -> None:
        self.jobs: dict[int, JobEntry] = {}
        self.next_job_id = first_job_id
        self._handlers: dict[type[Message], Handler] = {
            SubmitJob: self._on_submit,
            JobStateChanged: self._on_state,
            ReclaimRun: self._on_reclaim,
            JobAction: self._on_action,
            JobQuery: self._on_action,
        }


    def _on_submit(self, msg: SubmitJob, ctx: Context) -> None:
        spec = msg.spec
        by = msg.by
        if by is not None and by.user != msg.user and not by.admin:
            if msg.reply_address:
                reason = f"user {by.user!r} may not submit job {spec.name!r} as user {msg.user!r} (admins only)"
                ctx.send(msg.reply_address, JobRefused(ctx.next_id(), msg.id, (reason,), forbidden=True))
            return
        problems: list[str] = []
        waits: set[int] = set()
        for i, upstream in enumerate(spec.depends_on_jobs):
            entry = self.jobs.get(upstream)
            if entry is None:
                if not msg.restoring:  # when restoring, it was deleted: a deleted upstream releases its dependents
                    problems.append(f"depends_on_jobs[{i}]: no job with id {upstream}")
            elif not entry.done:
                waits.add(upstream)
        job_id = msg.job_id or self.next_job_id
        if job_id in self.jobs:
            problems.append(f"job id {job_id} is already taken")
        if problems:
            if msg.reply_address:
                ctx.send(msg.reply_address, JobRefused(ctx.next_id(), msg.id, tuple(problems)))
            return
        if spec.depend_mask is not None:
            rx = re.compile(spec.depend_mask)
            waits.update(
                e.job_id for e in self.jobs.values() if e.user == msg.user and not e.done and rx.fullmatch(e.name)
            )
        if spec.depend_mask_global is not None:
            rx = re.compile(spec.depend_mask_global)
            waits.update(e.job_id for e in self.jobs.values() if not e.done and rx.fullmatch(e.name))
        self.next_job_id = max(self.next_job_id, job_id + 1)
        self.jobs[job_id] = JobEntry(job_id, spec.name, msg.user)
        for upstream in waits:
            self.jobs[upstream].waiters.add(job_id)
        address = job_address(job_id)
        submit_time = ctx.now if msg.submit_time is None else msg.submit_time
        ctx.spawn(address, JobBehaviour(job_id, spec, msg.user, submit_time, task_events=msg.task_events))
        if msg.restore or msg.restore_avoided:
            restore = RestoreTasks(ctx.next_id(), job_id, msg.restore, msg.reclaim_s, msg.restore_avoided)
            ctx.send(address, restore)
        ctx.send(address, StartJob(ctx.next_id(), tuple(sorted(waits))))
        if msg.reply_address:
            ctx.send(msg.reply_address, JobAccepted(ctx.next_id(), msg.id, job_id))

    def _on_state(self, msg: JobStateChanged, ctx: Context) -> None:
        entry = self.jobs.get(msg.job_id)
        if entry is None:
            return
        entry.state = msg.state
        if msg.state in ("done", "deleted"):
            entry.done = True
            for waiter in sorted(entry.waiters):
                ctx.send(job_address(waiter), JobDependencyMet(ctx.next_id(), waiter, msg.job_id))
            entry.waiters.clear()
            if msg.state == "deleted":
                del self.jobs[msg.job_id]
        else:
            entry.done = False

    def _on_reclaim(self, msg: ReclaimRun, ctx: Context) -> None:
        """A reconnecting worker still runs this: its job decides, or, if the job is gone, it is stopped."""
        run = msg.run
        entry = self.jobs.get(run.job_id)
        if entry is not None and not entry.deleting:
            ctx.send(job_address(run.job_id), msg)
            return
        refused = ClaimRefused(ctx.next_id(), run.run_id, run.job_id, msg.render, "job gone")
        ctx.send(render_address(msg.render), refused)  # it forgets the run and stops it
        ctx.send(SOLVER, refused)  # the render counted it: give it back

    def _on_action(self, msg: JobAction | JobQuery, ctx: Context) -> None:
        entry = self.jobs.get(msg.job_id)
        if entry is None or entry.deleting:
            # a job stops itself when deleted: what is sent to it after the delete would never be answered
            reason = f"no job {msg.job_id}" if entry is None else f"job {msg.job_id} is being deleted"
            kind = "no_job" if entry is None else "gone"
            if msg.reply_address:
                ctx.send(msg.reply_address, ActionRefused(ctx.next_id(), msg.id, msg.job_id, reason, kind))
            return
        if isinstance(msg, JobAction) and msg.action == "delete" and (msg.by.admin or msg.by.user == entry.user):
            entry.deleting = True
        ctx.send(job_address(msg.job_id), msg)
