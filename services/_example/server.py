"""The example service's parts, declared for the runtime's host: nothing else here."""

from __future__ import annotations

from pond.example.v1 import notes_pb2, notes_pb2_grpc

from services._example.api import AUTH_RULES, Heartbeat, NotesServicer
from services._example.events import STREAM, NoteAdded
from services._example.notes import REMIND, Notes
from services._example.settings import ExampleSettings
from services._example.store import SCHEMA
from services.runtime.events import EventHandlers
from services.runtime.host import Consumer, HostContext, Service, ServiceSpec
from services.runtime.jobs import Job
from services.runtime.schedule import Schedule
from services.runtime.server import ServiceRegistration
from services.runtime.supervision import Task

SERVICE = notes_pb2.DESCRIPTOR.services_by_name["NotesService"]


async def build(ctx: HostContext[ExampleSettings]) -> Service:
    settings = ctx.settings
    store = await ctx.open_store(SCHEMA)
    notes = Notes(store, ctx.clock, replica=settings.example_replica,
                  timer_delay=settings.example_timer_delay_seconds)
    peer = None
    if settings.example_peer:
        peer = ctx.client(settings.example_peer, notes_pb2_grpc.NotesServiceStub, SERVICE,
                          idempotent=["Echo"])
    heartbeat = Heartbeat()
    servicer = NotesServicer(notes, heartbeat, peer)
    return Service(
        registration=ServiceRegistration(
            SERVICE,
            lambda server: notes_pb2_grpc.add_NotesServiceServicer_to_server(servicer, server),
            AUTH_RULES,
        ),
        store=store,
        publishes=STREAM,
        consumers=[Consumer(STREAM, EventHandlers(ctx.name, store, ctx.clock).on(
            NoteAdded, notes.on_note_added))],
        timers={REMIND: notes.on_remind},
        jobs=[Job("tally", Schedule.hourly(), notes.tally)],
        tasks=[Task("heartbeat", heartbeat.run, required=True)],
        handle=notes,
    )


SPEC = ServiceSpec(
    name="example",
    settings=ExampleSettings,
    build=build,
    port=lambda s: s.example_port,
    metrics_port=lambda s: s.example_metrics_port,
)
