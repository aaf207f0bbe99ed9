"""Python's cyclic garbage collector, tuned for a server that keeps thousands of sockets.

A full (generation 2) collection walks every tracked object and stops the event loop
while it does; with thousands of sockets that pause is what a viewer notices (the figures
are in docs/decisions.md, "The garbage collector is tuned for serving"). Two changes:

* What exists when the app has loaded (Django, the SDKs, this project's modules) never
  becomes garbage; `gc.freeze()` moves it out of the collector's sight.
* Full collections are made rarer (`GC_THRESHOLDS`, default 2000,10,100: a young
  collection per 2,000 net new objects, a middle one per 10 of those, a full one per 100
  middle ones, and still only when the objects waiting for it are a quarter of the
  heap). Young collections stay a few milliseconds; garbage that only a full collection
  can free (the cycles of a closed connection) waits longer for it.
"""

import gc

from django.conf import settings


def tune_for_serving() -> None:
    """Freeze what is loaded and set the thresholds; call once the app is imported."""
    gc.collect()  # what importing left behind, before the rest is frozen
    gc.freeze()
    gc.set_threshold(*settings.GC_THRESHOLDS)
