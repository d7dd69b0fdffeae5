"""The example's gRPC servicer: proto <-> use cases, thin; and who may call what."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
from pond.example.v1 import notes_pb2 as pb
from pond.example.v1 import notes_pb2_grpc

from services._example.notes import Notes
from services.runtime.auth import BACK_OFFICE, STAFF, Role, current_caller
from services.runtime.clients import Client
from services.runtime.errors import PondError
from services.runtime.logs import current_request_id

AUTH_RULES: dict[str, frozenset[Role]] = {
    "AddNote": STAFF,
    "GetNote": STAFF,
    "GetCounters": STAFF,
    "Echo": BACK_OFFICE,
    "EchoOnce": BACK_OFFICE,
    "Forward": BACK_OFFICE,
    "SetHeartbeat": frozenset({Role.OPERATOR}),
}


class Heartbeat:
    """The example's one required task: it runs until told to fail, then crashes at
    every (re)start until told otherwise."""

    def __init__(self) -> None:
        self.failing = False

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.failing:
                raise RuntimeError("heartbeat fails on purpose")
            try:
                await asyncio.wait_for(stop.wait(), 0.05)
            except TimeoutError:
                pass


class NotesServicer(notes_pb2_grpc.NotesServiceServicer):
    def __init__(
        self, notes: Notes, heartbeat: Heartbeat,
        peer: Client[notes_pb2_grpc.NotesServiceStub] | None,
    ) -> None:
        self.notes, self.heartbeat, self.peer = notes, heartbeat, peer
        self._echoes: Counter[str] = Counter()

    def _note(self, doc: dict) -> pb.Note:
        return pb.Note(
            id=doc["_id"], text=doc["text"], reminders=doc["reminders"],
            reminded_by=doc["reminded_by"], seen=doc["seen"],
            seen_request_id=doc["seen_request_id"],
            reminder_attempts=self.notes.reminder_attempts[doc["_id"]],
        )

    async def AddNote(self, request: pb.AddNoteRequest, context) -> pb.Note:
        return self._note(await self.notes.add(
            request.note_id, request.text, request.remind_in_seconds,
            request.failing_reminders, request.delay_seconds,
        ))

    async def GetNote(self, request: pb.GetNoteRequest, context) -> pb.Note:
        return self._note(await self.notes.get(request.note_id))

    async def GetCounters(self, request: pb.GetCountersRequest, context) -> pb.Counters:
        return pb.Counters(job_runs=await self.notes.job_runs())

    async def Echo(self, request: pb.EchoRequest, context) -> pb.EchoResponse:
        self._echoes[request.key] += 1
        attempts = self._echoes[request.key]
        if attempts <= request.fail_first:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "failing on purpose")
        caller = current_caller.get()
        return pb.EchoResponse(
            subject=caller.subject if caller else "", role=str(caller.role) if caller else "",
            request_id=current_request_id(), deadline_seconds=context.time_remaining() or 0.0,
            attempts=attempts,
        )

    EchoOnce = Echo

    async def Forward(self, request: pb.ForwardRequest, context) -> pb.ForwardResponse:
        if self.peer is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no peer configured")
        assert self.peer is not None
        method = {"Echo": self.peer.stub.Echo, "EchoOnce": self.peer.stub.EchoOnce}
        try:
            echo = await self.peer.call(method[request.method], request.echo)
        except PondError as err:  # the client raises the application error a failure is
            return pb.ForwardResponse(error_code=str(err.kind))
        return pb.ForwardResponse(echo=echo)

    async def SetHeartbeat(self, request: pb.SetHeartbeatRequest, context):
        self.heartbeat.failing = request.failing
        return pb.SetHeartbeatResponse()
