"""How fast one socket may send frames: a token bucket, pure, one per socket."""

from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """`rate` frames a second on average, bursts up to `burst`."""

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    last: float = field(default=0.0)

    def allow(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.last = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
