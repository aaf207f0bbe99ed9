"""This process's metrics in the Prometheus text format (no client library needed for
a dozen series). Counters only go up; gauges are read when scraped."""

import threading
from collections import defaultdict
from collections.abc import Callable

_lock = threading.Lock()


class Counter:
    def __init__(self, name: str, help_text: str, label: str | None = None) -> None:
        self.name, self.help, self.label = name, help_text, label
        self.values: dict[str, float] = defaultdict(float)
        REGISTRY.append(self)

    def inc(self, amount: float = 1.0, label_value: str = "") -> None:
        with _lock:
            self.values[label_value] += amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        if not self.values and self.label is None:
            lines.append(f"{self.name} 0")
        for label_value, value in sorted(self.values.items()):
            labels = f'{{{self.label}="{label_value}"}}' if self.label else ""
            lines.append(f"{self.name}{labels} {value:g}")
        return lines


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help_text, buckets
        self.counts = [0] * len(buckets)
        self.total, self.sum = 0, 0.0
        REGISTRY.append(self)

    def observe(self, value: float) -> None:
        with _lock:
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self.counts[i] += 1
            self.total += 1
            self.sum += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for bound, count in zip(self.buckets, self.counts, strict=True):
            lines.append(f'{self.name}_bucket{{le="{bound:g}"}} {count}')
        lines += [
            f'{self.name}_bucket{{le="+Inf"}} {self.total}',
            f"{self.name}_sum {self.sum:g}",
            f"{self.name}_count {self.total}",
        ]
        return lines


class Gauge:
    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help_text, read
        REGISTRY.append(self)

    def render(self) -> list[str]:
        try:
            value = self.read()
        except Exception:
            return []  # a gauge that cannot be read now is left out, not faked
        return [
            f"# HELP {self.name} {self.help}",
            f"# TYPE {self.name} gauge",
            f"{self.name} {value:g}",
        ]


REGISTRY: list = []

deltas_published = Counter("livechat_deltas_published_total", "Coalesced deltas published.")
frames_sent = Counter("livechat_frames_sent_total", "Frames sent to websocket viewers.")
frames_direct = Counter(
    "livechat_frames_direct_total",
    "Of the frames sent, those framed once per event and written straight to the socket.",
)
generations = Counter("livechat_generations_total", "Finished generations by status.", "status")
upstream_errors = Counter("livechat_upstream_errors_total", "Upstream failures by code.", "code")
layer_drops = Counter(
    "livechat_layer_drops_detected_total",
    "Deltas a socket never received (seq gaps healed by snapshot) or that failed to publish.",
)
sockets_behind = Counter(
    "livechat_sockets_behind_total",
    "Times a socket's peer stopped reading and live frames were held back for a snapshot.",
)
ttft = Histogram(
    "livechat_upstream_ttft_seconds",
    "Upstream time to first token.",
    (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
)


def gauge(name: str, help_text: str) -> Callable[[Callable[[], float]], Callable[[], float]]:
    """Register a function as a gauge read at scrape time."""

    def register(read: Callable[[], float]) -> Callable[[], float]:
        Gauge(name, help_text, read)
        return read

    return register


def render() -> str:
    lines: list[str] = []
    for metric in REGISTRY:
        lines += metric.render()
    return "\n".join(lines) + "\n"
