import textwrap

import pytest

from geventsched import builtin
from geventsched.builtin import default_registry
from geventsched.config import DEFAULT_TIMEOUT
from geventsched.errors import ConfigError
from geventsched.registry import App, Registry, load_apps


def write_module(tmp_path, monkeypatch, name, source):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_default_task_name_is_module_and_qualname(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "gs_names_mod", """
        from geventsched.registry import App
        app = App()

        @app.task
        def add(a, b):
            return a + b

        class Ops:
            @app.task
            def mul(a, b):
                return a * b
    """)
    [app] = load_apps(["gs_names_mod"])
    assert sorted(app.tasks) == ["gs_names_mod.Ops.mul", "gs_names_mod.add"]
    assert app.tasks["gs_names_mod.add"].fn(2, 3) == 5


def test_explicit_name_and_timeout():
    app = App()

    @app.task(name="resize", timeout=30)
    def resize(path):
        return path

    assert resize("x") == "x"  # the decorator returns the function unchanged
    task = app.tasks["resize"]
    assert (list(app.tasks), task.fn, task.timeout) == (["resize"], resize, 30)


def test_prefix_names_tasks():
    bare, prefixed = App(prefix=""), App(prefix="img")

    def thumb():
        pass

    bare.task(thumb)
    prefixed.task(thumb)
    assert list(bare.tasks) == ["thumb"] and list(prefixed.tasks) == ["img.thumb"]
    assert bare.tasks["thumb"].timeout == DEFAULT_TIMEOUT


def test_registering_a_name_twice_raises():
    app = App(prefix="")

    def job():
        pass

    app.task(job)
    app.task(job)  # the same function again is harmless
    with pytest.raises(ConfigError, match="'job' is registered twice"):
        app.task(name="job")(lambda: None)


def test_registry_merges_apps_and_rejects_conflicts():
    one, two = App(prefix="one"), App(prefix="")

    def shared():
        pass

    one.task(lambda: 1, name="a")
    two.task(shared)
    one.task(shared, name="shared")  # the same function under the same name in two apps is fine
    registry = Registry([one, two])
    assert registry.names() == ["a", "shared"]
    assert "a" in registry and "zzz" not in registry and registry.get("zzz") is None
    assert registry.get("shared").fn is shared
    clash = App()
    clash.task(lambda: 2, name="a")
    with pytest.raises(ConfigError, match="'a' is defined by two apps"):
        registry.add(clash)


def test_load_apps_on_missing_module_raises_config_error():
    with pytest.raises(ConfigError, match="gs_no_such_module_here"):
        load_apps(["gs_no_such_module_here"])


def test_load_apps_on_module_without_app_raises_config_error(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "gs_no_app_mod", """
        from geventsched.registry import App

        def helper():
            return App
    """)
    with pytest.raises(ConfigError, match="defines no geventsched App"):
        load_apps(["gs_no_app_mod"])


def test_default_registry_adds_module_tasks_to_builtins(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "gs_two_apps_mod", """
        from geventsched.registry import App
        first, second = App(prefix="x"), App(prefix="y")
        first.task(lambda: 1, name="one")
        second.task(lambda: 2, name="two")
    """)
    assert len(load_apps(["gs_two_apps_mod"])) == 2
    registry = default_registry(["gs_two_apps_mod"])
    assert registry.names() == ["echo", "fail", "noop", "one", "sleep", "spin", "two"]
    assert registry.get("two").fn() == 2


def test_builtin_app_has_exactly_the_five_tasks():
    assert sorted(builtin.app.tasks) == ["echo", "fail", "noop", "sleep", "spin"]
    tasks = {name: task.fn for name, task in builtin.app.tasks.items()}
    assert tasks["noop"]() is None
    assert tasks["echo"]({"a": [1]}) == {"a": [1]} and tasks["echo"]() is None
    assert tasks["sleep"](0) == 0
    assert isinstance(tasks["spin"](0.001), int)


def test_builtin_fail_raises():
    with pytest.raises(builtin.TaskFailure, match="^boom$"):
        builtin.app.tasks["fail"].fn("boom")
    with pytest.raises(RuntimeError, match="failed on purpose"):
        builtin.app.tasks["fail"].fn()
