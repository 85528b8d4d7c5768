"""Feast's online-store entity keys for a one-string-key entity, encoded in bulk and checked against Feast's
own encoder."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from functools import lru_cache

from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto


class StringKeyEncoder:
    """`serialize_entity_key` for entities with one string join key, without a proto per row.

    A one-key entity encodes as a prefix fixed by the join key's name, then the value's length and
    bytes; the prefix is cut from Feast's own encoding of an empty value and the result checked
    against Feast on probe values, so a change in Feast's format fails here instead of writing keys
    that `online_read` would never find.
    """

    PROBES = ("7590-VHVEG", "", "ünïcödé-ключ")

    def __init__(self, join_key: str, serialization_version: int):
        self.join_key = join_key
        self.version = serialization_version
        self.prefix = self.feast_encoding("")[:-4]
        for probe in self.PROBES:
            if self.encode_many([probe]) != [self.feast_encoding(probe)]:
                raise ValueError(f"entity key encoding of {probe!r} differs from Feast's (version {self.version})")

    def feast_encoding(self, value: str) -> bytes:
        key = EntityKeyProto(join_keys=[self.join_key], entity_values=[ValueProto(string_val=value)])
        return serialize_entity_key(key, entity_key_serialization_version=self.version)

    def encode_many(self, values: Iterable[str]) -> list[bytes]:
        prefix, pack = self.prefix, struct.Struct("<I").pack
        return [prefix + pack(len(raw)) + raw for raw in (v.encode("utf8") for v in values)]


@lru_cache(maxsize=8)
def string_key_encoder(join_key: str, serialization_version: int) -> StringKeyEncoder:
    """One checked encoder per join key and Feast key serialization version."""
    return StringKeyEncoder(join_key, serialization_version)
