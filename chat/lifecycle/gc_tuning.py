"""Python's cyclic garbage collector, tuned for a server that keeps thousands of sockets.

A full (generation 2) collection walks every tracked object and stops the event loop
while it does. With 1,000 viewers connected a daphne process tracks about 350,000
objects, and full collections took 140-300 ms each on the benchmark machine: at 100
streams x 10 viewers they, not the CPU, made the p99 (bench/REPORT.md, latency by
second of a round). Two changes, both measured there:

* What exists when the app has loaded (Django, the SDKs, this project's modules: about
  160,000 objects, 95 ms to walk) never becomes garbage; `gc.freeze()` moves it out of
  the collector's sight.
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
