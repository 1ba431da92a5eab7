"""A worker's components: started in order, stopped in reverse, their statuses walked for ``/readyz``.

Every long-lived part of a worker (the gateway's pools, the PostgreSQL source,
the pool snapshot writer, the ZeroMQ ingress) is a :class:`Component`. The
:class:`Lifecycle` owns them in the order they depend on each other: started
first to last, stopped last to first (the ZeroMQ ingress, started last, stops
first: what it has taken still needs the connections). ``/readyz`` is the walk
over their statuses (antenna's ``check_health``): ready when every component
that has a say is ready.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Status:
    """A component's part of ``/readyz``: whether it lets the worker be ready, and its view.

    ``ready`` None: the component has no say in readiness; ``view`` None: it
    adds nothing to the answer.
    """

    ready: bool | None = None
    view: Any = None


class Component(Protocol):
    """What the lifecycle needs of a part of the worker."""

    name: str  # its key in /readyz

    def start(self) -> None: ...

    def stop(self, timeout: float) -> None: ...

    def status(self) -> Status: ...


C = TypeVar("C", bound=Component)


class Lifecycle:
    """The worker's components in dependency order."""

    def __init__(self) -> None:
        self.components: list[Component] = []
        self.started = False
        self.stopping = False

    def add(self, component: C) -> C:
        """Append a component (started after, stopped before, those already added)."""
        if self.stopping:
            raise RuntimeError("the worker is stopping: no component may be added")
        self.components.append(component)
        if self.started:
            component.start()
        return component

    def start(self) -> None:
        """Start every component, first to last (idempotent)."""
        if self.started:
            return
        self.started = True
        for component in self.components:
            component.start()

    def drain(self) -> None:
        """The worker stops taking work (SIGTERM, max_requests): tell the components that care."""
        for component in self.components:
            drain = getattr(component, "drain", None)
            if drain is not None:
                drain()

    def stop(self, timeout: float) -> None:
        """Stop every component, last to first; one that fails to stop does not keep the others up."""
        self.stopping = True
        for component in reversed(self.components):
            try:
                component.stop(timeout)
            except Exception:
                log.exception("component %s failed to stop", component.name,
                              extra={"event": "internal_error", "component": component.name})

    def readiness(self) -> dict[str, Any]:
        """``/readyz``: ``ready`` and each component's view under its name."""
        answer: dict[str, Any] = {}
        ready = self.started and not self.stopping
        for component in self.components:
            status = component.status()
            if status.ready is not None:
                ready = ready and status.ready
            if status.view is not None:
                answer[component.name] = status.view
        answer["ready"] = ready
        return answer
