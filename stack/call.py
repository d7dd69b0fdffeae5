"""`python -m stack.call [Service.]Method 'JSON'`: call a Pond gRPC method on the dev
stack with the dev operator token; prints the response (each streamed message) as
JSON. Methods are looked up in MemberService and TaggingService."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import grpc
from google.protobuf import json_format, message_factory
from pond.member.v1 import member_pb2
from pond.tagging.v1 import tagging_pb2

from services.runtime.clients import call_metadata
from services.runtime.errors import error_details

SERVICES = {
    "MemberService": (member_pb2, "POND_MEMBER_TARGET", "127.0.0.1:50051"),
    "TaggingService": (tagging_pb2, "POND_TAGGING_TARGET", "127.0.0.1:50052"),
}


def _find(name: str):
    service_name, _, method_name = name.rpartition(".")
    for svc, (module, env, default) in SERVICES.items():
        if service_name and service_name != svc:
            continue
        service = module.DESCRIPTOR.services_by_name[svc]
        if method_name in service.methods_by_name:
            return service.methods_by_name[method_name], os.environ.get(env, default)
    return None, None


async def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    method, target = _find(argv[0])
    if method is None:
        print(f"unknown method {argv[0]}")
        return 2
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    request = json_format.Parse(argv[1] if len(argv) > 1 else "{}", request_cls())
    data_dir = Path(os.environ.get("POND_DATA_DIR", ".pond"))
    token = os.environ.get("POND_TOKEN") or (data_dir / "dev-operator.token").read_text().strip()
    path = f"/{method.containing_service.full_name}/{method.name}"
    async with grpc.aio.insecure_channel(target) as channel:
        kind = channel.unary_stream if method.server_streaming else channel.unary_unary
        call = kind(
            path,
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        try:
            if method.server_streaming:
                async for item in call(request, metadata=call_metadata(token), timeout=600):
                    print(json_format.MessageToJson(item, ensure_ascii=False), flush=True)
            else:
                response = await call(request, metadata=call_metadata(token), timeout=30)
                print(json_format.MessageToJson(response, ensure_ascii=False))
        except grpc.aio.AioRpcError as err:
            reason, violations = error_details(err)
            print(f"{err.code().name} {reason}: {err.details()}")
            for field, why in violations:
                print(f"  {field}: {why}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
