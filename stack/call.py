"""`python -m stack.call [Service.]Method 'JSON'`: call a Pond gRPC method on the dev
stack and print the response (each streamed message) as JSON. Methods are looked up
in MemberService, TaggingService and CommunityService.

It reads the same settings as `make run`: POND_HOST and POND_MEMBER_PORT /
POND_TAGGING_PORT / POND_COMMUNITY_PORT (or POND_MEMBER_TARGET / POND_TAGGING_TARGET /
POND_COMMUNITY_TARGET) for where to call,
POND_TOKEN or the dev token file in POND_DATA_DIR (default .pond) for the token."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable

import grpc
from google.protobuf import json_format, message_factory
from pond.community.v1 import community_pb2
from pond.member.v1 import member_pb2
from pond.tagging.v1 import tagging_pb2
from pydantic import ValidationError

from services.runtime.clients import call_metadata
from services.runtime.errors import error_details
from stack import config

SERVICES: dict[str, tuple[object, Callable[[], tuple[str, str]]]] = {
    "MemberService": (member_pb2, config.member_target),
    "TaggingService": (tagging_pb2, config.tagging_target),
    "CommunityService": (community_pb2, config.community_target),
}


class UsageError(Exception):
    """Something the caller must fix; printed as is, exit code 2."""


def _find(name: str):
    service_name, _, method_name = name.rpartition(".")
    for svc, (module, target) in SERVICES.items():
        if service_name and service_name != svc:
            continue
        service = module.DESCRIPTOR.services_by_name[svc]  # type: ignore[attr-defined]
        if method_name in service.methods_by_name:
            return service.methods_by_name[method_name], target
    raise UsageError(
        f"unknown method {name} (MemberService, TaggingService and CommunityService methods)"
    )


def _token() -> str:
    if os.environ.get("POND_TOKEN"):
        return os.environ["POND_TOKEN"].strip()
    path = config.token_path()
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise UsageError(
            f"no token: {path.resolve()} does not exist; start the stack with make run "
            "(and the same POND_DATA_DIR) or set POND_TOKEN"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot read the token file {path.resolve()}: {exc.strerror}") from None


async def call(argv: list[str]) -> int:
    method, target_of = _find(argv[0])
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    try:
        request = json_format.Parse(argv[1] if len(argv) > 1 else "{}", request_cls())
    except json_format.ParseError as exc:
        raise UsageError(f"bad request JSON for {method.input_type.full_name}: {exc}") from None
    token = _token()
    target, source = target_of()
    service = method.containing_service
    path = f"/{service.full_name}/{method.name}"
    async with grpc.aio.insecure_channel(target) as channel:
        kind = channel.unary_stream if method.server_streaming else channel.unary_unary
        stub = kind(
            path,
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        try:
            if method.server_streaming:
                async for item in stub(request, metadata=call_metadata(token), timeout=600):
                    print(json_format.MessageToJson(item, ensure_ascii=False), flush=True)
            else:
                response = await stub(request, metadata=call_metadata(token), timeout=30)
                print(json_format.MessageToJson(response, ensure_ascii=False))
        except grpc.aio.AioRpcError as err:
            if err.code() is grpc.StatusCode.UNAVAILABLE:
                print(
                    f"cannot reach {service.name} at {target} (from {source}): "
                    f"is the stack running there? ({err.details()})",
                    file=sys.stderr,
                )
                return 1
            reason, violations = error_details(err)
            print(f"{err.code().name} {reason}: {err.details()}", file=sys.stderr)
            for field, why in violations:
                print(f"  {field}: {why}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        return asyncio.run(call(argv))
    except UsageError as exc:
        print(f"stack.call: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"stack.call: bad setting: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `stack.call ... | head`: the reader has gone, which is not the call's failure.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
