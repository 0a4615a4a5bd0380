"""What one round learned, in a form every replica can apply to its own views.

A round (``rounds.poll``) yields a ``RoundResult``: per watched id the job as
``GET /compute/{system}/jobs/{id}`` answers it, which of them accounting settled,
which it could not be asked about (the accounting command failed: retried by later
rounds), and which neither the controller nor accounting knows. The replica that
ran the round applies it to its views; with a shared store (``lease``) it also
sends it, as JSON, to the other replicas, which apply it to theirs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hpcgate.compute.scheduler.models import Job


@dataclass
class RoundResult:
    """One round of one scope (a polling identity)."""

    scope: str
    jobs: dict[str, Job] = field(default_factory=dict)
    """Watched id -> the answer (the controller's records, merged with accounting's)."""
    settled: set[str] = field(default_factory=set)
    """Ids whose accounting holds every record in a final state."""
    unaccounted: set[str] = field(default_factory=set)
    """Ids accounting should have been asked about, but its command failed (or is
    backing off): not settled, asked again by a later round."""
    nowhere: set[str] = field(default_factory=set)
    """Ids asked of the controller and of accounting, found in neither."""
    accounting_error: str | None = None
    """Why accounting was not asked (our own words, no remote text)."""
    accounting_tried: bool = False
    """The round ran the accounting command (its outcome: ``accounting_error``)."""
    accounting_detail: str | None = None
    """What the failed accounting command said (for this server's log; not sent)."""
    error: str | None = None
    """The whole round failed (the controller's command): nothing else is set."""
    seconds: float = 0.0
    gens: dict[str, int] = field(default_factory=dict)
    """Per replica, the generation of its interest this round included (``lease``)."""

    def to_json(self, replica: str) -> str:
        return json.dumps(
            {
                "replica": replica,
                "scope": self.scope,
                "jobs": {k: v.model_dump(mode="json") for k, v in self.jobs.items()},
                "settled": sorted(self.settled),
                "unaccounted": sorted(self.unaccounted),
                "nowhere": sorted(self.nowhere),
                "accounting_error": self.accounting_error,
                "accounting_tried": self.accounting_tried,
                "error": self.error,
                "seconds": self.seconds,
                "gens": self.gens,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> tuple[str, RoundResult]:
        """The sending replica and the result; ``ValueError`` for anything malformed."""
        raw: Any = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        try:
            result = cls(
                scope=str(raw["scope"]),
                jobs={str(k): Job.model_validate(v) for k, v in raw["jobs"].items()},
                settled={str(i) for i in raw["settled"]},
                unaccounted={str(i) for i in raw["unaccounted"]},
                nowhere={str(i) for i in raw["nowhere"]},
                accounting_error=raw["accounting_error"],
                accounting_tried=bool(raw["accounting_tried"]),
                error=raw["error"],
                seconds=float(raw["seconds"]),
                gens={str(k): int(v) for k, v in raw["gens"].items()},
            )
            return str(raw["replica"]), result
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed round result: {exc!r}") from exc
