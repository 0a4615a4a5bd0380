"""The shared job watcher: one polling loop per system, whatever the number of clients.

Clients (event streams, long-polls, repeated GETs) register interest in jobs; per
round the watcher asks, per *scope*, the controller ONCE for the watched jobs
(``Scheduler.active_jobs``; Slurm: one ``squeue -t all``) and, when some of them
ended, left the controller or were never seen, accounting ONCE for those
(``Scheduler.accounted_jobs``; Slurm: one ``sacct -j``), then publishes each job's
state changes to its subscribers. A scope is the identity the commands run as: the
system's service identity (``service_user``, one scope for all users), or each
interested user in per-user mode. The watcher speaks only the ``Scheduler``
interface and judges jobs by ``hpcgate.compute.jobs``: another backend needs no
change here.

Modules: ``job_watcher`` (the consumers' API and the polling loop), ``view_writer``
(a round's result applied to views, events published), ``scope`` (one polling
identity's views and interest), ``rounds`` (what a round makes of the records),
``views`` (views, events, subscriptions), ``budget`` (subscriber budgets),
``lease``/``lease_redis``/``results`` (one replica polls for all: the lease, the
others' interest and the rounds' results shared through Redis).

* Trust: a scope's views are fed only by commands run as the scope's own identity.
  Everything a command prints as user B comes through B's login shell, which B
  controls, so an answer B's session gave never reaches a view other users read:
  in the service scope only the service identity's rounds write views (a caller's
  own lookup, ``observe(...)``, only asks for the job to be watched); a per-user
  scope is fed and read by its user alone. Jobs the rounds have not seen are looked
  up by the next round, as the scope's identity, all in the same batched commands.
* Selection: the jobs of ``users`` (Slurm: ``squeue -u``) when someone follows all
  of a user's jobs, else the watched ids (``squeue -j``) (ids whose job ended and settled are no
  longer polled: they cannot change; ids no command knows are dropped).
* Interval: ``min_interval`` while a watched job is pending/running/completing, or
  changed in the last round, or a new waiter needs a first observation;
  ``max_interval`` when only ended jobs are watched; no rounds without interest. Two
  rounds of a scope never start less than ``min_interval`` apart, so any number of
  new waiters cost at most one round per ``min_interval``.
* Views: per watched id (a job, an array: its summary, an array task) the latest
  ``Job`` as ``GET /compute/{system}/jobs/{id}`` answers it, with its recent events.
  A view is *fresh* while younger than the scope's interval; a view whose job ended
  and whose accounting settled is final and always fresh.
* Events: one per observed change of a job's state (for an array: of the summary's
  or any task's state). Ids are increasing per system (milliseconds since the epoch,
  bumped when equal), so they also increase across restarts of the server.
* Visibility: views carry the job's owner; every consumer API takes the caller's
  user name and answers per ``hpcgate.compute.scheduler.visibility`` (``NotFound``, as for
  an unknown id, otherwise). All-jobs subscriptions are the caller's own jobs.
* Bounds: open streams and long-polls per user and in all (``acquire``: 429/503),
  leases per user (the oldest go), views kept after interest ends only for their
  owner and at most ``max_leases_per_user`` per owner, events queued per subscriber.
"""

from hpcgate.compute.watcher.budget import SLOT_RETRY_AFTER, Slot, SubscriberBudget
from hpcgate.compute.watcher.job_watcher import JobWatcher, RunnerFactory
from hpcgate.compute.watcher.views import QUEUE_LIMIT, JobEvent, JobView, Subscription, signature

__all__ = [
    "QUEUE_LIMIT",
    "SLOT_RETRY_AFTER",
    "JobEvent",
    "JobView",
    "JobWatcher",
    "RunnerFactory",
    "Slot",
    "SubscriberBudget",
    "Subscription",
    "signature",
]
