"""Every Redis key and channel name geventsched uses, in one place.

With namespace ``NS`` every name below is prefixed with ``NS:``.

Channels (pub/sub; names from the original design, so its scripts keep working):

    CHANNEL_DISPATCH_<n>          jobs for the worker that holds channel n
    CHANNEL_RESULT                results, read by the master
    geventsched:reply:<client>    results for one waiting client
    geventsched:wakeup            "the intake has new jobs", read by the master
    geventsched:cancel            ids of jobs just cancelled that a worker may hold, read by every worker
                                  (a cue: a worker believes the stored result, see worker.py)

Keys:

    geventsched:seq               INCR counter for job ids
    geventsched:jobs              hash  id -> encoded job (queued or in flight)
    geventsched:intake            list  ids of priority-0 jobs waiting for the master, oldest first
    geventsched:intake:<p>        list  the same for priority p (1..9); the master takes the highest first
    geventsched:priority          hash  id -> p, for jobs of priority p > 0 (back to their list on a requeue)
    geventsched:unique            hash  unique key -> id of the job that holds it (while that job has a
                                  record and no result)
    geventsched:inflight          zset  id -> deadline (unix seconds) of dispatched jobs
    geventsched:dispatched        hash  id -> "<token> <time> <channel> <worker>": the dispatch in flight, its
                                  token (results must carry it), when it went, the channel and the worker
                                  it went to (found again after a master restart)
    geventsched:tasks             hash  task name -> JSON of its options (time limit), written by workers
    geventsched:attempts          hash  id -> dispatches that ended without a result (requeued)
    geventsched:retries           hash  id -> retries after failures so far
    geventsched:scheduled         zset  id -> when a delayed job is due, or a failed one runs again (backoff)
    geventsched:dead              list  ids of dead-lettered jobs
    geventsched:result:<id>       string, encoded result, with a TTL
    geventsched:replykey:<reply channel>  string, the secret a client's reply frames are signed with
                                  (``protocol.reply_mac``), with a TTL the client renews
    geventsched:finished          hash  status -> count of jobs finished (each job once)
    geventsched:done              list  ids of finished jobs, oldest first, while their results are kept
    geventsched:held              set   names of tasks that have a held list (``limits.py``)
    geventsched:held:<task>       list  ids of the task's jobs held back by its rate limit or max_running,
                                  in the order they go (no attempt counted; state ``queued``)
    geventsched:rate:<task>       list  "<time> <count>" per dispatched batch of the task, newest first: its
                                  last N starts or more (its rate limit is N per period); expires a
                                  period after the last one
    geventsched:running:<task>    set   ids of the task's jobs dispatched (its max_running), for the next
                                  master; holds finished ones until a master sees them finish
    geventsched:workers           set   ids of registered workers
    geventsched:worker:<id>       string, the worker's heartbeat (JSON), expires when it stops beating
    geventsched:channels          hash  channel -> id of the worker holding it (the channel lease)
    geventsched:master            string, id of the active master (lease with a TTL)
    geventsched:schedules         hash  name -> periodic schedule (JSON); fire:<name>:<time> claims a fire time
    geventsched:wf:<wid>          hash  one workflow (``workflow.py``): its state, its reply channel and one
                                  line per node of its tree (``n<i>``); expires with the results once
                                  the workflow has ended
    geventsched:wf:<wid>:t        hash  node -> job record of each step not released yet
    geventsched:wf:<wid>:r        hash  "<group>:<position>" -> result JSON of a group's finished child
    geventsched:wf:<wid>:p:<g>    set   positions of group g's children still pending (each leaves once)
    geventsched:wfcounts          hash  started / ok / failed / cancelled -> workflows so far

On a Redis Cluster (``cluster=True``) our own prefix is a hash tag, ``{geventsched}:`` (or
``{NS:geventsched}:``), and the result channel is ``{geventsched}:CHANNEL_RESULT``: every key, the
result, reply, wake-up and cancel channels then live in one slot, so each Lua script stays on one shard
and may publish (SPUBLISH) from inside. The dispatch channels keep their names and spread over
every shard's slots: that is the traffic that grows with the fleet.
"""

DISPATCH_PREFIX = "CHANNEL_DISPATCH_"
#: Priorities run from 0 (the default) to this; higher is dispatched first.
MAX_PRIORITY = 9


class Keys:
    """Names for one namespace. Build every key and channel through this class."""

    def __init__(self, namespace="", cluster=False):
        self.namespace = namespace
        self.cluster = cluster
        self.prefix = f"{namespace}:" if namespace else ""
        own = f"{{{self.prefix}geventsched}}:" if cluster else f"{self.prefix}geventsched:"
        self.own = own
        self.result_channel = f"{own}CHANNEL_RESULT" if cluster else f"{self.prefix}CHANNEL_RESULT"
        self.wakeup_channel = own + "wakeup"
        self.cancel_channel = own + "cancel"
        self.seq = own + "seq"
        self.jobs = own + "jobs"
        self.intake = own + "intake"
        #: The intake lists, highest priority first: the order the master claims in.
        self.intakes = [self.intake_for(p) for p in range(MAX_PRIORITY, -1, -1)]
        self.priority = own + "priority"
        self.unique = own + "unique"
        self.done = own + "done"
        self.inflight = own + "inflight"
        self.attempts = own + "attempts"
        self.dispatched = own + "dispatched"
        self.tasks = own + "tasks"
        self.dead = own + "dead"
        self.retries = own + "retries"
        self.scheduled = own + "scheduled"
        self.result_prefix = own + "result:"
        self.finished = own + "finished"
        self.workers = own + "workers"
        self.worker_prefix = own + "worker:"
        self.channels = own + "channels"
        self.master = own + "master"
        self.schedules, self.fire_prefix = own + "schedules", own + "fire:"
        #: Workflow keys (``lua/workflow.lua`` builds the same names from this prefix).
        self.workflow_prefix = own + "wf:"
        #: ``reply_key_prefix + reply channel``: the secret that signs that client's reply frames.
        self.reply_key_prefix = own + "replykey:"
        self.workflow_counts = own + "wfcounts"
        self.held = own + "held"
        self.held_prefix = own + "held:"

    def held_for(self, task):
        """The list of jobs of ``task`` held back by its limit."""
        return self.held_prefix + task

    def rate_for(self, task):
        """The start times of ``task``'s recent dispatches (its rate limit's window)."""
        return f"{self.own}rate:{task}"

    def running_for(self, task):
        """The ids of ``task``'s jobs dispatched and maybe still running (its max_running)."""
        return f"{self.own}running:{task}"

    def intake_for(self, priority):
        """The intake list of jobs of ``priority`` (0..9); priority 0 keeps the original list."""
        return self.intake if not priority else f"{self.intake}:{priority}"

    def dispatch_channel(self, name):
        """``name`` is a channel number or a full channel name (from ``--channels``)."""
        name = str(name)
        if name.isascii() and name.isdecimal():
            name = DISPATCH_PREFIX + name
        return self.prefix + name

    def result(self, job_id):
        return self.result_prefix + job_id

    def worker(self, worker_id):
        return self.worker_prefix + worker_id

    def workflow(self, workflow_id):
        return self.workflow_prefix + workflow_id

    def workflow_templates(self, workflow_id):
        return f"{self.workflow_prefix}{workflow_id}:t"

    def workflow_results(self, workflow_id):
        return f"{self.workflow_prefix}{workflow_id}:r"

    def workflow_pending(self, workflow_id, node):
        return f"{self.workflow_prefix}{workflow_id}:p:{node}"

    def reply_channel(self, client_id):
        return f"{self.own}reply:{client_id}"
