"""The replay buffer shared by all agent-loop workers: a Ray actor and its client.

The actor owns one buffer built by any buffer plugin (the pipeline's ``buffer``);
records cross process boundaries as msgpack bytes (msgspec), never pickled.
:class:`RemoteBuffer` satisfies :class:`dreamgym_core.protocols.ReplayBuffer`, so the
synthetic environment uses it exactly as it uses a local buffer.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import msgspec

from dreamgym_core.errors import DreamGymError
from dreamgym_core.records import Transition

__all__ = ["BufferActor", "RemoteBuffer", "NAMESPACE"]

NAMESPACE = "dreamgym"

_encode = msgspec.msgpack.Encoder().encode
_transitions = msgspec.msgpack.Decoder(list[Transition])
_nested = msgspec.msgpack.Decoder(list[list[Transition]])
_queries = msgspec.msgpack.Decoder(list[tuple[str, str]])


class BufferActor:
    """Holds one ReplayBuffer; every method takes and returns msgpack bytes or ints.

    Run it with ``ray.remote(BufferActor)``; ``make_buffer`` is called once, inside the actor.
    """

    def __init__(self, make_buffer: Callable[[], Any]) -> None:
        self.buffer = make_buffer()

    def add(self, payload: bytes) -> int:
        return self.buffer.add(transitions=_transitions.decode(payload))

    def retrieve(self, payload: bytes, k: int) -> bytes:
        return _encode(self.buffer.retrieve(queries=_queries.decode(payload), k=k))

    def sample(self, n: int, seed: int | None) -> bytes:
        return _encode(self.buffer.sample(n=n, seed=seed))

    def size(self) -> int:
        return len(self.buffer)

    def flush(self) -> None:
        self.buffer.flush()

    def close(self) -> None:
        self.buffer.close()


class RemoteBuffer:
    """ReplayBuffer client of a :class:`BufferActor` (blocking calls)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self._closed = False

    @classmethod
    def start(cls, make_buffer: Callable[[], Any], *, name: str | None = None) -> RemoteBuffer:
        """Start a new actor (named, in namespace ``dreamgym``, when ``name`` is given)."""
        import ray

        options: dict[str, Any] = {"num_cpus": 0}
        if name:
            options |= {"name": name, "namespace": NAMESPACE, "get_if_exists": True}
        client = cls(ray.remote(BufferActor).options(**options).remote(make_buffer))
        len(client)  # raises here, not at first use, if the buffer cannot be built
        return client

    @classmethod
    def connect(cls, name: str) -> RemoteBuffer:
        """The client of the running actor ``name`` (started by the trainer)."""
        import ray

        try:
            return cls(ray.get_actor(name, namespace=NAMESPACE))
        except ValueError as exc:
            raise DreamGymError(f"shared buffer actor {name!r} is not running in this Ray cluster") from exc

    def _get(self, ref: Any) -> Any:
        import ray

        return ray.get(ref)

    def add(self, *, transitions: Sequence[Transition]) -> int:
        return self._get(self.handle.add.remote(_encode(list(transitions))))

    def retrieve(self, *, queries: Sequence[tuple[str, str]], k: int) -> list[list[Transition]]:
        return _nested.decode(self._get(self.handle.retrieve.remote(_encode(list(queries)), k)))

    def sample(self, *, n: int, seed: int | None = None) -> list[Transition]:
        return _transitions.decode(self._get(self.handle.sample.remote(n, seed)))

    def __len__(self) -> int:
        return self._get(self.handle.size.remote())

    def flush(self) -> None:
        self._get(self.handle.flush.remote())

    def close(self) -> None:
        """Flush and close the actor's buffer; idempotent from this client."""
        if not self._closed:
            self._closed = True
            self._get(self.handle.close.remote())
