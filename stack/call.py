"""`python -m stack.call METHOD 'JSON'`: call a MemberService method on the dev
stack with the dev operator token; prints the response as JSON."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import grpc
from google.protobuf import json_format
from pond.member.v1 import member_pb2, member_pb2_grpc

from services.runtime.clients import call_metadata
from services.runtime.errors import error_details


async def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    method_name, body = argv[0], argv[1] if len(argv) > 1 else "{}"
    service = member_pb2.DESCRIPTOR.services_by_name["MemberService"]
    method = service.methods_by_name.get(method_name)
    if method is None:
        print(f"unknown method {method_name}; one of: {', '.join(service.methods_by_name)}")
        return 2
    request_cls = getattr(member_pb2, method.input_type.name)
    request = json_format.Parse(body, request_cls())
    data_dir = Path(os.environ.get("POND_DATA_DIR", ".pond"))
    token = os.environ.get("POND_TOKEN") or (data_dir / "dev-operator.token").read_text().strip()
    target = os.environ.get("POND_MEMBER_TARGET", "127.0.0.1:50051")
    async with grpc.aio.insecure_channel(target) as channel:
        stub = member_pb2_grpc.MemberServiceStub(channel)
        try:
            response = await getattr(stub, method_name)(
                request, metadata=call_metadata(token), timeout=10
            )
        except grpc.aio.AioRpcError as err:
            reason, violations = error_details(err)
            print(f"{err.code().name} {reason}: {err.details()}")
            for field, why in violations:
                print(f"  {field}: {why}")
            return 1
    print(json_format.MessageToJson(response, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
