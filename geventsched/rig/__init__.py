"""The benchmark rig: tooling, not runtime. Nothing imports it but ``geventsched bench``
(``command.main``), the suite in ``bench/`` and the tests.

* ``rig.py``: ``Rig`` (a worker process and an in-process master on a fresh namespace), its
  ``Recorder`` and ``CpuMeter``, ``percentiles``, ``environment``, ``RedisFor``;
* ``command.py``: the ``bench`` command on top of it;
* ``rawecho.py``: the raw limit, a pub/sub echo with no job machinery
  (``python -m geventsched.rig.rawecho``);
* ``cluster.py``: ``EmbeddedCluster``, a private Redis Cluster for the cluster tests and scenarios.
"""
