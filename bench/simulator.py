"""`manage.py simulate_openai`, run with a recorder of every content chunk's `sim_ts`.

The simulator stamps each content chunk with `sim_ts` (its `time.time()` at emission).
The server under test does not pass that stamp on to viewers, so this launcher keeps a
copy: for every completion, the prompt it answered (directives removed) and the
`sim_ts` of each content chunk in order. `GET /bench/records` returns and forgets the
records of the completions that have finished; `GET /bench/records?keep=1` leaves them.

Nothing of the simulator's behaviour changes: the hooks wrap the two module-level
functions that build a completion and a content event, and the management command
runs unmodified (`call_command("simulate_openai", ...)`).

    python -m bench.simulator --port 8100 --chunk-ms 16.7 --ttft-ms 200
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def install_recorder() -> None:
    from chat.simulator import completions, script

    prompts: dict[str, str] = {}  # completion id -> clean prompt
    stamps: dict[str, list[float | None]] = {}  # completion id -> sim_ts per token
    sizes: dict[str, int] = {}  # completion id -> number of content tokens, once all made

    original_build = completions.build_completion
    original_event = completions._content_event
    original_handle = script.Simulator.handle

    def build_completion(request, directives, prompt, id_, created):  # type: ignore[no-untyped-def]
        completion = original_build(request, directives, prompt, id_, created)
        prompts[completion.id] = prompt
        stamps[completion.id] = []
        completion.tokens = counted(completion.id, completion.tokens)
        return completion

    def counted(cid, tokens):  # type: ignore[no-untyped-def]
        # Tokens are made as they are sent: their number is known after the last one.
        made = 0
        for token in tokens:
            made += 1
            yield token
        sizes[cid] = made

    def content_event(c, token, clock):  # type: ignore[no-untyped-def]
        slots = stamps.setdefault(c.id, [])
        index = len(slots)
        slots.append(None)

        def stamped_clock() -> float:
            t = clock()
            slots[index] = t
            return t

        return original_event(c, token, stamped_clock)

    def handle(self, method: str, path: str, body: bytes):  # type: ignore[no-untyped-def]
        if path.startswith("/bench/records"):
            keep = "keep=1" in path
            done: dict[str, Any] = {}
            for cid, slots in list(stamps.items()):
                if cid in sizes and len(slots) >= sizes[cid] and all(t is not None for t in slots):
                    done.setdefault(prompts.get(cid, cid), []).append(slots)
                    if not keep:
                        stamps.pop(cid, None)
                        prompts.pop(cid, None)
                        sizes.pop(cid, None)
            return script.json_plan(200, {"records": done})
        return original_handle(self, method, path, body)

    completions.build_completion = build_completion
    completions._content_event = content_event
    script.Simulator.handle = handle


def main(argv: list[str]) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings_test")
    import django

    django.setup()
    install_recorder()
    from django.core.management import call_command

    call_command("simulate_openai", *argv)


if __name__ == "__main__":
    main(sys.argv[1:])
