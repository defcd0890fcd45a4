"""dahu.factory: plugin directories, DAHU_PLUGINS, load_source, register."""

import sys
import textwrap

import pytest

from dahu.factory import BUILTIN_PLUGIN_DIR, Factory, UnknownPlugin, load_source, register
from dahu.job import Job
from dahu.plugin import Plugin


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def test_load_source_does_not_touch_sys_modules(tmp_path):
    path = write(tmp_path / "loner.py", "VALUE = 42\n")
    module = load_source("loner_mod", str(path))
    assert module.VALUE == 42
    assert "loner_mod" not in sys.modules


def test_register_is_a_decorator_with_lower_case_name():
    @register
    class ShoutingPlugin(Plugin):
        pass

    name = f"{__name__}.shoutingplugin".lower()
    assert Factory.registry[name] is ShoutingPlugin
    assert isinstance(Factory()(name.upper()), ShoutingPlugin)


def test_builtin_examples_found_case_insensitively():
    factory = Factory()
    assert factory.directories[-1] == BUILTIN_PLUGIN_DIR
    plugin = factory("Example.Cube")
    plugin.setup({"x": 2})
    plugin.process()
    assert plugin.output["result"] == 8
    assert "example" in Factory.plugin_dirs[BUILTIN_PLUGIN_DIR]


def test_dahu_plugins_module_file_and_package(plugin_dir):
    write(
        plugin_dir / "beamline_one.py",
        """
        from dahu.plugin import Plugin, plugin_from_function
        from dahu.factory import register

        def double(x):
            "Double x."
            return 2 * x

        plugin_from_function(double)

        @register
        class Triple(Plugin):
            "Triple x."
            def process(self):
                self.output["result"] = 3 * self.input["x"]
        """,
    )
    package = plugin_dir / "beamline_pkg"
    package.mkdir()
    write(package / "helpers.py", "FACTOR = 5\n")
    write(
        package / "__init__.py",
        """
        from dahu.plugin import Plugin
        from dahu.factory import register
        from .helpers import FACTOR

        @register
        class Scale(Plugin):
            "Scale x by FACTOR."
            def process(self):
                self.output["result"] = FACTOR * self.input["x"]
        """,
    )
    factory = Factory()
    assert factory.directories[0] == str(plugin_dir)
    assert factory("beamline_one.double")(x=4) == 8
    triple = factory("beamline_one.triple")
    triple.setup({"x": 2})
    triple.process()
    assert triple.output["result"] == 6
    scale = factory("beamline_pkg.scale")
    scale.setup({"x": 2})
    scale.process()
    assert scale.output["result"] == 10
    listing = factory.list_plugins()
    assert listing["beamline_one.double"] == "Double x."
    assert listing["beamline_pkg.scale"] == "Scale x by FACTOR."
    assert "beamline_one" not in sys.modules


def test_configured_directory_searched_before_builtin(tmp_path):
    write(tmp_path / "example.py", "from dahu.plugin import plugin_from_function\n")
    factory = Factory(plugin_path=[str(tmp_path)])
    assert factory.directories.index(str(tmp_path)) < factory.directories.index(BUILTIN_PLUGIN_DIR)


def test_a_directory_not_there_is_ignored_with_one_line_until_added_again(tmp_path, caplog):
    """dahu_server --plugins on a mount not there yet: one line naming it, in the log and
    (through Factory.ignored) in the device's Status; an Init adding it again finds it."""
    late, file = tmp_path / "late", write(tmp_path / "file", "")
    factory = Factory(plugin_path=[str(late), str(file)])
    late_line = f"plugin directory {late} does not exist: ignored"
    file_line = f"plugin directory {file} is not a directory: ignored"  # "does not exist"
    assert list(factory.ignored.values()) == [late_line, file_line]
    assert [r.getMessage() for r in caplog.records] == list(factory.ignored.values())
    # a job of a plugin there is told why its module is not found
    with pytest.raises(UnknownPlugin) as info:
        factory("latemod.f")
    assert str(info.value).endswith(f"({late_line}) ({file_line})")
    late.mkdir()  # mounted
    factory.add_directory(str(late))
    assert str(late) in factory.directories and str(late) not in factory.ignored


@pytest.mark.parametrize("name", ["../x", "os.system", "nomodule.plugin", "", "example"])
def test_unknown_or_outside_names_give_a_one_line_reason(name):
    factory = Factory()
    with pytest.raises(UnknownPlugin) as info:
        factory(name)
    message = str(info.value)
    assert "\n" not in message
    assert repr(name) in message


@pytest.mark.parametrize("name", ["a" * 100_000 + ".x", "not a name " * 10_000])
def test_the_reason_for_a_huge_name_is_short(name):
    # bug: the reason held the whole name twice (module and plugin): a client sending a
    # name of 100 kB got a one-line message of 200 kB
    with pytest.raises(UnknownPlugin) as info:
        Factory()(name)
    message = str(info.value)
    assert len(message) < 1000 and "\n" not in message
    assert message.startswith(("invalid plugin name 'aaaa", "invalid plugin name 'not a name"))


def test_a_plugin_name_past_1000_characters_is_refused_its_module_existing():
    # bug: "example.ccc..." of 50 MB was taken (the module exists): one job recorded
    # 200 MB of journal, and getJobInfo answered 50 MB
    factory = Factory()
    factory.locate("example." + "c" * 992)  # 1000 characters: found, as any name
    with pytest.raises(UnknownPlugin) as info:
        factory.locate("example." + "c" * 993)
    assert str(info.value).endswith(
        "ccc': 1,001 characters, more than the 1,000 a plugin name may have"
    )
    assert str(info.value).startswith("invalid plugin name 'example.ccc")


def test_unknown_plugin_reason_lists_directories():
    factory = Factory()
    with pytest.raises(UnknownPlugin, match="no module 'nomodule' found in .*plugins"):
        factory("nomodule.plugin")


def test_module_that_fails_to_import_is_reported(plugin_dir):
    write(plugin_dir / "broken.py", "raise ImportError('missing libfoo')\n")
    with pytest.raises(UnknownPlugin, match="cannot load plugin 'broken.x': ImportError"):
        Factory()("broken.x")


def test_plugin_module_with_dataclass_and_future_annotations(plugin_dir):
    write(
        plugin_dir / "typed.py",
        """
        from __future__ import annotations
        from dataclasses import dataclass
        from dahu.plugin import Plugin
        from dahu.factory import register

        @dataclass
        class Settings:
            npt: int = 10

        @register
        class Typed(Plugin):
            def process(self):
                self.output["npt"] = Settings().npt
        """,
    )
    plugin = Factory()("typed.typed")
    plugin.process()
    assert plugin.output["npt"] == 10
    assert "typed" not in sys.modules


def test_a_directory_given_to_one_factory_is_searched_by_every_factory(tmp_path, engine):
    # bug: Factory(plugin_path=[d]) in a script, then Job("beamline.Integrate"): the job's
    # factory did not search d ("unknown plugin"); the original shares the directories
    write(
        tmp_path / "beamline.py",
        "from dahu.plugin import Plugin\n"
        "from dahu.factory import register\n"
        "@register\n"
        "class Integrate(Plugin):\n"
        "    def process(self):\n"
        "        self.output['ok'] = True\n",
    )
    Factory(plugin_path=[str(tmp_path)])
    job = Job("beamline.Integrate", {})
    job.start()
    job.join(30)
    assert job.status == "success", job.output_data
    assert job.output_data["ok"] is True
    assert "beamline.integrate" in Factory().list_plugins()  # another factory lists it


def test_list_plugins_sees_the_modules_added_and_removed_since(tmp_path):
    # bug: the listing (listPlugins of a server with the thread executor) went by the
    # index of the directory made when it was added: a module added later was not
    # listed, and one removed was listed as "gone.<error> : cannot load: FileNotFoundError"
    module = "from dahu.plugin import plugin_from_function\n\n\ndef {0}(x=0):\n    '{0}.'\n"
    write(tmp_path / "gone.py", module.format("old") + "\n\nplugin_from_function(old)\n")
    factory = Factory(plugin_path=[str(tmp_path)])
    (tmp_path / "gone.py").unlink()
    write(tmp_path / "added.py", module.format("new") + "\n\nplugin_from_function(new)\n")
    listing = factory.list_plugins()
    assert listing.get("added.new") == "new."
    assert not [name for name in listing if name.startswith("gone.")]


def test_a_module_hidden_by_one_of_the_same_name_earlier_is_named_in_the_reason(
    tmp_path, monkeypatch
):
    # bug: "module 'twin' does not define it" only, although the user's twin.py of the
    # second directory defines it: nothing said which file was loaded, nor that the
    # first directory's module of that name hides the second's
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    plugin = "from dahu.plugin import Plugin\nfrom dahu.factory import register\n\n"
    write(first / "twin.py", plugin + "@register\nclass Hello(Plugin):\n    pass\n")
    write(second / "twin.py", plugin + "@register\nclass OnlyHere(Plugin):\n    pass\n")
    monkeypatch.setenv("DAHU_PLUGINS", f"{first}:{second}")
    factory = Factory()
    assert type(factory("twin.hello")).__module__ == "twin"  # the first directory's
    with pytest.raises(UnknownPlugin) as info:
        factory("twin.onlyhere")
    assert str(info.value) == (
        f"unknown plugin 'twin.onlyhere': module 'twin' ({first / 'twin.py'}) does not "
        f"define it (the module 'twin' of {second} is hidden by it)"
    )


def test_a_name_registered_again_by_another_module_is_said_in_the_log(caplog):
    # bug: a module registering a name another module had registered replaced its plugin
    # without a word; which one ran depended on which module a job had loaded last
    first = type("Hello", (Plugin,), {"__module__": "twin_first"})
    second = type("Hello", (Plugin,), {"__module__": "twin_second"})
    register(first, "twins.hello")
    register(first, "twins.hello")  # the same again (a module loaded again): nothing said
    assert not caplog.records
    register(second, "twins.hello")
    assert Factory.registry["twins.hello"] is second
    assert [r.getMessage() for r in caplog.records] == [
        "plugin twins.hello: twin_second.Hello replaces twin_first.Hello "
        "(the last one registered runs)"
    ]


def test_a_plugin_module_file_with_a_dash_in_its_name_runs(plugin_dir, engine):
    # bug: "invalid plugin name 'id-02.v'": the original ran the plugins of id-02.py
    write(
        plugin_dir / "id-02.py",
        "from dahu.plugin import plugin_from_function\n\n\n"
        "def v(x=1):\n    'Seven times x.'\n    return 7 * x\n\n\nplugin_from_function(v)\n",
    )
    job = Job("ID-02.v", {"x": 2})
    job.start()
    job.join(30)
    assert (job.status, job.output_data["result"]) == ("success", 14)
    assert Factory().list_plugins()["id-02.v"] == "Seven times x."


def test_a_module_an_added_directory_now_hides_is_named_in_the_log(tmp_path, caplog):
    # bug: an Init adding a directory before the one a plugin module was imported from
    # (the original's plugins, with their own example.py) gave no word: listPlugins and
    # startJob looked at the new one, while the thread executor's jobs ran the module
    # imported before, until the server restarted (the process executor's ran the new)
    first, later = tmp_path / "first", tmp_path / "later"
    for directory, text in ((later, "later"), (first, "first")):
        directory.mkdir()
        write(
            directory / "hiddenmod.py",
            "from dahu.plugin import plugin_from_function\n\n\n"
            f"def which():\n    return {text!r}\n\n\nplugin_from_function(which)\n",
        )
    factory = Factory(plugin_path=[str(later)])
    assert factory("hiddenmod.which").function() == "later"  # imported from there
    caplog.clear()
    factory.add_directories([str(later)])  # an Init changing nothing: no word
    assert not caplog.records
    factory.add_directories([str(first), str(later)])  # an Init putting first before it
    assert [r.getMessage() for r in caplog.records] == [
        f"plugin module hiddenmod: {first / 'hiddenmod.py'} comes first in the plugin "
        f"directories now, but {later / 'hiddenmod.py'} was imported: its jobs run that "
        "one until the server restarts"
    ]
