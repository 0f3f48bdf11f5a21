from collections.abc import Sequence

from .model import SpanRecord

CONTENT_TYPE: str

class ProtoEncoder:
    implementation: str
    content_type: str
    service_name: str
    scope_name: str
    scope_version: str

    def __init__(self, service_name: str, scope_name: str, scope_version: str) -> None: ...
    def encode(self, spans: Sequence[SpanRecord]) -> bytes: ...
    def encode_span(self, span: SpanRecord) -> bytes: ...
