"""dahu.cache.DataCache: bounded LRU, Borg-shared by default, thread-safe."""

import threading

import pytest

from dahu.cache import DataCache


def test_borg_instances_share_state():
    first = DataCache()
    first.clear()
    first["a"] = 1
    second = DataCache()
    assert second["a"] == 1
    assert second.has_key("a")
    assert "a" in second
    second.pop("a")
    assert "a" not in first


def test_independent_cache_when_not_borg():
    shared = DataCache()
    own = DataCache(max_size=3, borg=False)
    own["x"] = 1
    assert "x" not in shared
    assert own.get("y", 42) == 42


def test_lru_eviction_and_ordered_keys():
    cache = DataCache(max_size=3, borg=False)
    for key in "abc":
        cache[key] = key.upper()
    assert cache.keys() == ["a", "b", "c"]
    assert cache["a"] == "A"  # touching "a" makes "b" the oldest
    cache["d"] = "D"
    assert cache.keys() == ["c", "a", "d"]
    assert "b" not in cache
    assert len(cache) == 3


def test_thread_safe_under_concurrent_writers():
    cache = DataCache(max_size=50, borg=False)
    errors = []

    def writer(n):
        try:
            for i in range(2000):
                cache[(n, i)] = i
                cache.get((n, i - 1))
                if i % 7 == 0:
                    cache.pop((n, i), None)
        except Exception as err:  # pragma: no cover - only on failure
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(cache) <= 50
    assert len(cache.keys()) == len(cache)


def test_borg_keeps_the_size_it_was_first_made_with():
    first = DataCache()
    later = DataCache(first.max_size + 7)
    assert later.max_size == first.max_size
    own = DataCache(first.max_size + 7, borg=False)
    assert own.max_size == first.max_size + 7


def test_get_with_a_default_stores_it_as_the_original():
    cache = DataCache(max_size=3, borg=False)
    made = {"integrator": object()}
    assert cache.get("geometry", made) is made
    assert cache["geometry"] is made  # stored: the next job finds it
    assert cache.get("geometry", {}) is made
    assert cache.get("absent") is None and "absent" not in cache


def test_a_missing_key_is_a_key_error_and_the_original_value_error():
    # bug: only KeyError; plugins written for the original catch ValueError
    cache = DataCache(borg=False)
    cache["there"] = 1
    for expected in (KeyError, ValueError):
        with pytest.raises(expected) as info:
            cache["integrator-for-poni-1"]
        assert info.value.args == ("integrator-for-poni-1",)
    assert cache["there"] == 1 and list(cache) == ["there"]
