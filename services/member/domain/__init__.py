"""The member service's rules: plain dataclasses and functions, no I/O.

Enum numbers mirror the proto enums of pond.member.v1 and pond.common.v1, so the api
layer converts with int() and the domain never imports generated code."""
