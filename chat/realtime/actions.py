"""What a member's client frame does in a conversation, checked against their access
as it is now (roles change, members are removed, accounts are deactivated, passwords
change and sessions end while sockets stay open).

A prompt or a regenerate checks access in the same trip to the database thread as its
write; the answer then runs in the process's generation registry, not in the socket.
"""

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY

from chat import protocol
from chat.domain import selectors, services
from chat.domain.db import db
from chat.exceptions import Forbidden, NotFound
from chat.fanout.publish import publish_frames, request_cancel
from chat.generation.registry import Job, registry
from chat.generation.runner import StreamRequest
from chat.models import Membership, Message
from chat.protocol import CLOSE_NOT_MEMBER, CLOSE_NOT_SIGNED_IN

VIEWERS_MAY_NOT_WRITE = "Viewers can read but not prompt or cancel."


class AccessLost(Exception):
    """The member may no longer act here: the socket closes with `code`."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code, self.why = code, why


class MemberActions:
    """One socket's member in one conversation."""

    def __init__(self, *, conversation_id: uuid.UUID, user: Any, session: Any) -> None:
        self.conversation_id = conversation_id
        self.user = user
        self.session = session
        self.session_hash: str | None = None
        self.membership: Membership | None = None

    def connect_access(self) -> Membership | None:
        """The membership the socket starts with (sync); notes the auth hash its session
        was signed in with, which every later frame checks against the password."""
        session = self.session
        self.session_hash = session.get(HASH_SESSION_KEY) if session is not None else None
        self.membership = selectors.membership_get(
            conversation_id=self.conversation_id, user=self.user
        )
        return self.membership

    def _frame_access(self) -> tuple[bool, Membership | None]:
        return selectors.frame_access(
            session=self.session,
            session_hash=self.session_hash,
            conversation_id=self.conversation_id,
            user=self.user,
        )

    def _admit(self, signed_in: bool, membership: Membership | None) -> Membership:
        """The membership a frame acts with; AccessLost when there is none now."""
        self.membership = membership if signed_in else None
        if not signed_in:
            raise AccessLost(CLOSE_NOT_SIGNED_IN, "session ended")
        if membership is None:
            raise AccessLost(CLOSE_NOT_MEMBER, "no longer a member")
        return membership

    async def check(self) -> Membership:
        """Re-check what connect checked (for a frame that writes nothing)."""
        return self._admit(*await db(self._frame_access)())

    async def prompt(self, frame: protocol.PromptFrame) -> str | None:
        """Store the prompt and start its answer; the frame to send back to this socket
        alone (a retried `client_msg_id`: the stored prompt again), or None."""
        submitted = await self._submit_if_allowed(
            services.prompt_submit,
            conversation_id=self.conversation_id,
            user=self.user,
            content=frame.content,
            client_msg_id=frame.client_msg_id,
            model=settings.OPENAI_MODEL,
        )
        prompt_frame = protocol.message_frame(protocol.message_payload(submitted.user_message))
        if not submitted.created:
            return protocol.dumps(prompt_frame)  # stored (and running or done) already
        self._start(submitted, prompt_frame)
        return None

    async def regenerate(self, message_id: str) -> None:
        submitted = await self._submit_if_allowed(
            services.regenerate_submit,
            conversation_id=self.conversation_id,
            user=self.user,
            message_id=message_id,
            model=settings.OPENAI_MODEL,
        )
        self._start(submitted)

    async def cancel(self, message_id: str) -> None:
        """Stop a running answer, wherever it runs."""
        if not (await self.check()).can_write:
            raise Forbidden(VIEWERS_MAY_NOT_WRITE)
        message = await db(selectors.message_get)(
            conversation_id=self.conversation_id, message_id=message_id
        )
        if message is None or message.status != Message.Status.STREAMING:
            raise NotFound("No running generation with that id in this conversation.")
        if not registry.stop(str(message.id), "cancelled"):
            await request_cancel(message.id)

    def _start(self, submitted: services.Submitted, *frames: dict[str, Any]) -> None:
        """Start the answer, and publish `frames` and its placeholder meanwhile: the
        upstream request does not wait for those round trips; the answer's first delta,
        or its `done`, does (`Job.announced`)."""
        assistant = submitted.assistant_message
        frames = (*frames, protocol.message_frame(protocol.message_payload(assistant)))
        announced = asyncio.create_task(publish_frames(self.conversation_id, frames))
        request = StreamRequest(
            model=settings.OPENAI_MODEL,
            messages=submitted.history,
            max_tokens=settings.OPENAI_MAX_TOKENS,
        )
        registry.start(Job(self.conversation_id, assistant.id, request, announced=announced))

    async def _submit_if_allowed(
        self, submit: Callable[..., services.Submitted], **kwargs: Any
    ) -> services.Submitted:
        """`submit(**kwargs)`, run only if the frame's access check lets this member
        write, in the same trip to the database thread: one thread hop per prompt."""

        def check_then_submit() -> tuple[bool, Membership | None, services.Submitted | None]:
            signed_in, membership = self._frame_access()
            may_write = signed_in and membership is not None and membership.can_write
            return signed_in, membership, submit(**kwargs) if may_write else None

        signed_in, membership, submitted = await db(check_then_submit)()
        if not self._admit(signed_in, membership).can_write:
            raise Forbidden(VIEWERS_MAY_NOT_WRITE)
        return submitted
