"""Tasks declared blocking=True run in threads and leave the hub free; undeclared CPU work blocks it."""

from conftest import wait_until
from helpers import client_for, start_system

TASKS = '''
import time
from geventsched.registry import App

app = App(prefix="")


def burn(seconds):
    open("started", "w").close()  # tells the test the job is running (the hub may be too busy to say)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass
    return seconds


@app.task(blocking=True)
def burn_in_thread(seconds):
    return burn(seconds)


@app.task
def burn_on_hub(seconds):
    return burn(seconds)
'''


def quick_job_beats_slow_one(spawn, r, namespace, redis_url, tmp_path, slow_task):
    """Start a 1.5 s CPU-bound job, then a no-op; True if the no-op finished while the other still ran."""
    (tmp_path / "cpu_tasks.py").write_text(TASKS)
    start_system(spawn, r, namespace, worker_args=("--channels", "2", "--app", "cpu_tasks"), cwd=tmp_path)
    client = client_for(redis_url, namespace)
    slow = client.submit(slow_task, 1.5)
    wait_until((tmp_path / "started").exists, message="the slow job to run")
    quick = client.submit("noop")
    assert client.wait([quick], timeout=30)[quick.id].ok
    slow_done_already = client.store.get_results([slow.id])[0] is not None
    assert slow.result(timeout=30) == 1.5
    client.close()
    return not slow_done_already


def test_blocking_task_leaves_the_hub_free_for_other_jobs(spawn, r, namespace, redis_url, tmp_path):
    assert quick_job_beats_slow_one(spawn, r, namespace, redis_url, tmp_path, "burn_in_thread")


def test_undeclared_cpu_bound_task_holds_up_the_others(spawn, r, namespace, redis_url, tmp_path):
    assert not quick_job_beats_slow_one(spawn, r, namespace, redis_url, tmp_path, "burn_on_hub")
