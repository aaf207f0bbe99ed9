"""Live deployments for integration tests: a database and channel layer shared by daphne
servers on free ports, signed-in sessions, and websocket viewers that check the
protocol's ordering rules as frames arrive. Processes are started and stopped by
deploy.harness; the names of it the tests use are available here too."""

import asyncio
import contextlib
import json
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from websockets.asyncio.client import ClientConnection, connect

from deploy import harness
from deploy.harness import ROOT, OwnRedis, Process, free_port, spawn
from project.env import env_bool

__all__ = [
    "COMPACT_SUBPROTOCOL",
    "PASSWORDS",
    "ROOT",
    "UNHANDLED",
    "Deployment",
    "OwnRedis",
    "Process",
    "Server",
    "Session",
    "Viewer",
    "free_port",
    "metric_value",
    "spawn",
    "start_simulator",
]

# The subprotocol that asks for deltas as `["d", message_id, seq, text]`: the contract's
# name, written out here so a change to chat.protocol's shows.
COMPACT_SUBPROTOCOL = "livechat.compact"

PASSWORDS = {name: f"pw-{name}-123" for name in ("alice", "bob", "carol", "dave")}

# Whether the servers under test reach into daphne's internals (DAPHNE_INTERNALS, on by
# default; CI also runs the suite with it off). Without them a close code daphne refuses
# arrives as its private-range twin, and an oversized frame drops the connection.
DAPHNE_INTERNALS = env_bool("DAPHNE_INTERNALS", True)  # read as the settings read it
# The contract's twins (DESIGN), written out here so a change to chat.protocol's shows.
TWINS = {1009: 4009, 1012: 4012, 1013: 4013}


def expected_close(code: int) -> int:
    """The close code a client sees from the servers under test for `code`."""
    return code if DAPHNE_INTERNALS else TWINS.get(code, code)


def start_simulator(tmp: Path, *, chunk_ms: float = 2, ttft_ms: float = 20) -> tuple[Process, str]:
    """`manage.py simulate_openai` on a free port, with the test settings; returns the
    process and its /v1 URL."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings_test"}
    return harness.start_simulator(env, log_dir=tmp, chunk_ms=chunk_ms, ttft_ms=ttft_ms)


@dataclass
class Deployment:
    """One database and one channel layer that any number of daphne processes share."""

    name: str
    env: dict[str, str]
    tmp: Path
    servers: list[Process] = field(default_factory=list)

    @property
    def multiprocess_capable(self) -> bool:
        return "REDIS_URL" in self.env

    def manage(self, *args: str) -> str:
        """`manage.py args` in this deployment's environment; its standard output."""
        return harness.manage(self.env, *args)

    def seed_users(self) -> None:
        """The users of PASSWORDS, with those passwords."""
        code = (
            "from django.contrib.auth import get_user_model\n"
            f"for name, pw in {PASSWORDS!r}.items():\n"
            "    u, _ = get_user_model().objects.get_or_create(username=name)\n"
            "    u.set_password(pw); u.save()\n"
        )
        self.manage("shell", "-c", code)

    def start_server(self, **extra_env: str) -> "Server":
        """A daphne process of this deployment on a free port, ready."""
        port = free_port()
        process = harness.start_server(
            {**self.env, **extra_env},
            port=port,
            log_path=self.tmp / f"daphne-{self.name}-{port}.log",
        )
        self.servers.append(process)
        return Server(f"http://127.0.0.1:{port}", process)

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


# A server log may mention handled failures, but never an unhandled exception.
UNHANDLED = re.compile(
    r"Traceback \(most recent call last\)"
    r"|Exception inside application"
    r"|Task exception was never retrieved"
)


async def form_post(
    http: httpx2.AsyncClient, path: str, data: dict[str, str], **headers: str
) -> httpx2.Response:
    """Fill the Django form at `path` as a browser does (its CSRF token from the page)
    and post it."""
    page = await http.get(path)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    return await http.post(path, data={**data, "csrfmiddlewaretoken": token}, headers=headers)


def new_user(deployment: Deployment, *, staff: bool = False) -> str:
    """A user of this test alone (others share alice and her password)."""
    name = f"u{uuid.uuid4().hex[:10]}"
    PASSWORDS[name] = f"pw-{name}-123"
    flags = "u.is_staff = True; u.is_superuser = True; " if staff else ""
    deployment.manage(
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model\n"
        f"u = get_user_model().objects.create_user({name!r}, password={PASSWORDS[name]!r})\n"
        f"{flags}u.save()\n",
    )
    return name


@dataclass
class Server:
    url: str
    process: Process

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")

    def assert_clean_log(self) -> None:
        log = self.process.log()
        match = UNHANDLED.search(log)
        assert match is None, (
            f"unhandled exception in server log:\n{log[max(0, match.start() - 2000) :][:6000]}"
        )


def metric_value(text: str, name: str) -> float:
    """The value of an unlabelled metric in a /metrics text."""
    return float(next(x for x in text.splitlines() if x.startswith(f"{name} ")).split()[1])


class Session:
    """A signed-in user talking to one server over HTTP and websockets."""

    def __init__(self, server: Server, username: str) -> None:
        self.server = server
        self.username = username
        self.http = httpx2.AsyncClient(base_url=server.url, timeout=10)

    async def login(self) -> "Session":
        response = await form_post(
            self.http,
            "/accounts/login/",
            {"username": self.username, "password": PASSWORDS[self.username]},
        )
        assert response.status_code == 302, (
            f"login of {self.username} failed: {response.status_code}"
        )
        assert "sessionid" in self.http.cookies
        return self

    async def close(self) -> None:
        await self.http.aclose()

    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.http.cookies.items())

    async def metric(self, name: str) -> float:
        """A metric of the server this session talks to (its /metrics, from loopback)."""
        return metric_value((await self.http.get("/metrics")).text, name)

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"X-CSRFToken": self.http.cookies.get("csrftoken", "")}
        response = await self.http.request(method, path, json=body, headers=headers)
        data = response.json() if response.content else None
        return response.status_code, data

    async def create_conversation(
        self, title: str = "test", members: dict[str, str] | None = None
    ) -> str:
        status, data = await self.api("POST", "/api/conversations/", {"title": title})
        assert status == 201, data
        for username, role in (members or {}).items():
            status, added = await self.api(
                "POST",
                f"/api/conversations/{data['id']}/members/",
                {"username": username, "role": role},
            )
            assert status == 201, added
        return data["id"]

    async def messages(self, conversation_id: str) -> list[dict[str, Any]]:
        status, data = await self.api("GET", f"/api/conversations/{conversation_id}/messages/")
        assert status == 200, data
        return data["messages"]

    async def viewer(
        self,
        conversation_id: str,
        server: Server | None = None,
        *,
        heal: bool = False,
        compact: bool = False,
    ) -> "Viewer":
        """A viewer of the conversation; `compact` offers the compact delta subprotocol
        (its deltas are recorded as the long form, with `"compact": True`)."""
        server = server or self.server
        ws = await connect(
            f"{server.ws_url}/ws/chat/{conversation_id}/",
            origin=server.url,
            additional_headers={"Cookie": self.cookie_header()},
            compression=None,
            max_size=None,
            subprotocols=[COMPACT_SUBPROTOCOL] if compact else None,
        )
        viewer = Viewer(ws, name=self.username, heal=heal)
        viewer.start()
        await viewer.wait_for(lambda f: f["type"] == "snapshot", what="snapshot")
        return viewer


class Viewer:
    """A websocket client that applies the protocol's merge rule and records breaches."""

    def __init__(self, ws: ClientConnection, name: str = "", *, heal: bool = False) -> None:
        self.ws = ws
        self.name = name
        # heal: on a gap, do what the page does (send `sync`) instead of recording it.
        self.heal = heal
        self.syncs = 0
        self.frames: list[dict[str, Any]] = []
        self.texts: dict[str, str] = {}
        self.seqs: dict[str, int] = {}
        self.final: dict[str, dict[str, Any]] = {}
        self.breaches: list[str] = []
        self.close_code: int | None = None
        self._changed = asyncio.Condition()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                if isinstance(frame, list):
                    frame = self._from_compact(frame)
                self._apply(frame)
                async with self._changed:
                    self.frames.append(frame)
                    self._changed.notify_all()
        except Exception:
            pass
        finally:
            self.close_code = self.ws.close_code
            async with self._changed:
                self._changed.notify_all()

    def _from_compact(self, frame: list[Any]) -> dict[str, Any]:
        """A compact delta, `["d", message_id, seq, text]`, as the long form."""
        if len(frame) != 4 or frame[0] != "d":
            self.breaches.append(f"not a compact delta: {frame!r}")
            return {"type": "unknown"}
        _, message_id, seq, text = frame
        return {
            "type": "delta",
            "message_id": message_id,
            "seq": seq,
            "text": text,
            "compact": True,
        }

    def _apply(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "snapshot":
            for m in frame["messages"]:
                self.texts[m["id"]], self.seqs[m["id"]] = m["content"], m["seq"]
                if m["status"] != "streaming":
                    self.final[m["id"]] = m
        elif kind == "message":
            m = frame["message"]
            self.texts.setdefault(m["id"], m["content"])
            self.seqs.setdefault(m["id"], m["seq"])
        elif kind == "delta":
            mid, seq = frame["message_id"], frame["seq"]
            expected = self.seqs.get(mid, 0) + 1
            if seq < expected and self.heal:
                return  # already shown (the snapshot held it)
            if seq != expected:
                if self.heal:
                    self.syncs += 1
                    asyncio.get_running_loop().create_task(self.send({"type": "sync"}))
                    return
                self.breaches.append(f"{self.name}: delta seq {seq} for {mid}, expected {expected}")
                return
            self.texts[mid] = self.texts.get(mid, "") + frame["text"]
            self.seqs[mid] = seq
        elif kind == "done":
            m = frame["message"]
            self.final[m["id"]] = m
            if self.texts.get(m["id"], "") != m["content"]:
                self.breaches.append(
                    f"{self.name}: streamed text of {m['id']} differs from done content"
                )

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        *,
        what: str = "frame",
        timeout: float = 20,
        start: int = 0,
    ) -> dict[str, Any]:
        """The first frame (from index `start`) matching `predicate`."""

        async def find() -> dict[str, Any]:
            async with self._changed:
                index = start
                while True:
                    for frame in self.frames[index:]:
                        if predicate(frame):
                            return frame
                    index = len(self.frames)
                    if self._task is not None and self._task.done():
                        raise AssertionError(
                            f"{self.name}: socket closed ({self.close_code}) waiting for {what}"
                        )
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(find(), timeout)
        except TimeoutError:
            seen = [f["type"] for f in self.frames][-20:]
            raise AssertionError(f"{self.name}: no {what} within {timeout}s; got {seen}") from None

    async def done(self, message_id: str, timeout: float = 30) -> dict[str, Any]:
        frame = await self.wait_for(
            lambda f: f["type"] == "done" and f["message"]["id"] == message_id,
            what=f"done of {message_id}",
            timeout=timeout,
        )
        return frame["message"]

    async def final_text(self, message_id: str, timeout: float = 30) -> str:
        """The text shown once the message is final, by `done` or by a snapshot."""
        await self.wait_for(
            lambda f: (
                (f["type"] == "done" and f["message"]["id"] == message_id)
                or (f["type"] == "snapshot" and message_id in self.final)
            ),
            what=f"final state of {message_id}",
            timeout=timeout,
        )
        return self.texts[message_id]

    async def prompt(self, content: str, **extra: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Send a prompt; returns (user message, assistant placeholder) as broadcast."""
        start = len(self.frames)
        client_msg_id = extra.pop("client_msg_id", str(uuid.uuid4()))
        await self.send(
            {"type": "prompt", "content": content, "client_msg_id": client_msg_id, **extra}
        )
        user = await self.wait_for(
            lambda f: (
                (
                    f["type"] == "message"
                    and f["message"]["role"] == "user"
                    and f["message"]["content"] == content
                )
                or f["type"] == "error"
            ),
            what="prompt echo",
            start=start,
        )
        assert user["type"] == "message", user
        assistant = await self.wait_for(
            lambda f: f["type"] == "message" and f["message"]["role"] == "assistant",
            what="assistant placeholder",
            start=start,
        )
        return user["message"], assistant["message"]

    def delta_frames(self, message_id: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "delta" and f["message_id"] == message_id]

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)
