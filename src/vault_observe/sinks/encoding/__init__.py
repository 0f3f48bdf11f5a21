"""The body encoders of the sinks, in one place.

Each wire format has a Python encoder here, which is also the oracle its compiled
twin (``_batch_json``, ``_zipkin_proto``) is tested against byte for byte:

* ``honeycomb``: batch-API events (``EventEncoder``) and their body (``BatchEncoder``);
* ``otlp``: the OTLP/HTTP JSON request (``encode_span``, ``BodyEncoder``);
* ``zipkin_proto``: the Zipkin ``ListOfSpans`` protobuf (``ProtoEncoder``);
* ``zipkin``: Zipkin JSON v2 (``JsonEncoder``) and the choice of the protobuf encoder;
* ``wire``: what they share (RFC 3339 times, JSON strings, ``JoinedBody``);
* ``compiled``: which compiled encoders are used (the ``_compat`` switch).
"""
