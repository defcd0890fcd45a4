"""The per-plugin tables of a server stay bounded whatever plugin names clients send."""

from __future__ import annotations

from types import SimpleNamespace

from dahu.statistics import OTHER_PLUGINS, PLUGIN_ROWS, RunningStatistics
from dahu.web.monitor import Monitor

NAMES = [f"soak.x{i}" for i in range(PLUGIN_ROWS + 44)]  # the module exists, not these


def test_running_statistics_fold_the_names_past_the_bound():
    # bug: each unknown plugin of a known module ("soak.x1", "soak.x2", ...) added a
    # row to the server's statistics, for ever
    stats = RunningStatistics()
    for name in NAMES:
        stats.created(name)
        stats.ended(name, "failure", 1.0, 2.0)
    stats.created("soak.late")  # still queued
    plugins = stats.summary({"soak.late": {"starting": 1}})["plugins"]
    assert len(plugins) == PLUGIN_ROWS + 1 and "soak.x0" in plugins
    other = plugins[OTHER_PLUGINS]
    assert (other["count"], other["failure"], other["starting"]) == (45, 44, 1)
    assert sum(entry["count"] for entry in plugins.values()) == len(NAMES) + 1


def test_the_web_page_folds_the_names_past_the_bound():
    monitor = Monitor()
    for job_id, name in enumerate(NAMES, 1):
        job = SimpleNamespace(id=job_id, name=name, status="failure", runtime=0.1, error="no")
        monitor.job_ended(job)
    plugins = monitor.plugins()
    assert len(plugins) == PLUGIN_ROWS + 1 and plugins[OTHER_PLUGINS]["jobs"] == 44


def test_a_plugin_name_of_a_megabyte_does_not_widen_the_statistics_table():
    # bug: one job of "example.ccc..." (1 MB: startJob takes it, its module exists) made
    # every row of getStatistics (and statisticsCollected) a megabyte wide: 4 MB for it
    from dahu.statistics import format_statistics

    stats = RunningStatistics()
    for name in ("example.square", "example." + "c" * 1_000_000, "x.\n"):
        stats.created(name)
        stats.ended(name, "failure", 1.0, 2.0)
    text = format_statistics(stats.summary())
    assert max(len(line) for line in text.splitlines()) < 300, len(text)
    assert f"example.{'c' * 90}...{'c' * 99} " in text and "x.\\n " in text


def test_the_statistics_count_as_finished_the_jobs_aborted_before_they_ran():
    # bug: 10,000 jobs aborted in the queue read "jobs: 10000, finished: 1" (the one that
    # ran), where the device's jobsFinished said 10000
    from dahu.statistics import format_statistics

    stats = RunningStatistics()
    stats.created("example.sleep", 3)
    stats.ended("example.sleep", "aborted", 1.0, 2.0)
    for _ in range(2):
        stats.ended("example.sleep", "aborted", None, 2.0)
    assert "\njobs: 3, finished: 3, ran: 1\n" in format_statistics(stats.summary())


def test_the_statistics_count_a_plugin_however_its_jobs_spell_it():
    # bug: jobs of Example.Square and example.square (one plugin: names are
    # case-insensitive) had a row each in getStatistics and Job.stats(), and took two of
    # the 256 rows; dahu-jobs stats counted them in one
    stats = RunningStatistics()
    for name in ("example.square", "Example.Square", "EXAMPLE.SQUARE"):
        stats.created(name)
        stats.ended(name, "success", 1.0, 2.0)
    stats.created("Example.Square")  # still queued
    plugins = stats.summary({"Example.Square": {"starting": 1}})["plugins"]
    assert list(plugins) == ["example.square"]
    assert (plugins["example.square"]["count"], plugins["example.square"]["starting"]) == (4, 1)
