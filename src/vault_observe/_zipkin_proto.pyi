"""Type stub of the compiled Zipkin protobuf encoder (``_zipkin_proto.pyx``).

``encode`` raises ``errors.LeftToPython`` for a batch the Python encoder must write.
"""

from collections.abc import Sequence

from .model import SpanRecord

class ProtoEncoder:
    implementation: str
    service_name: str
    scope_name: str
    scope_version: str

    def __init__(self, service_name: str, scope_name: str, scope_version: str) -> None: ...
    def encode(self, spans: Sequence[SpanRecord]) -> bytes: ...
