"""The server's garbage-collector setup (chat/lifecycle/gc_tuning.py)."""

import gc

import pytest

from chat.lifecycle import gc_tuning


@pytest.fixture
def restored_gc():
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_what_is_loaded_is_frozen_and_the_thresholds_come_from_settings(settings, restored_gc):
    gc.unfreeze()
    settings.GC_THRESHOLDS = (1234, 5, 67)
    loaded = ["made before the server is tuned"]
    gc_tuning.tune_for_serving()
    made_later = ["made while serving"]
    assert gc.get_threshold() == (1234, 5, 67)
    assert gc.get_freeze_count() > 10_000  # Django and the app
    walked = {id(o) for o in gc.get_objects()}  # what a collection looks at
    assert id(loaded) not in walked
    assert id(made_later) in walked
