"""Durable job state: statistics and training jobs, and each analyst's privacy budget.

Jobs live in the gateway's database, so any gunicorn worker can answer
``GET /v1/statistics/{id}`` or ``GET /v1/federation/jobs/{id}`` for a job another worker
ran, and a restart loses no result.
A stored job holds only what the analyst may fetch anyway: the encrypted sums (the gateway
has no key to decrypt them), the layout and the release rules.

**Privacy budget (ε accounting).** Each analyst (OAuth client) has a lifetime budget
(``TONGBAN_DP_BUDGET``, default 10). A DP job's ε is spent *before* any department is
asked, by one conditional ``UPDATE … SET spent = spent + ε WHERE spent + ε <= budget``, so
concurrent jobs (in any worker) can never overspend. The job's ledger row is written in the
same transaction. A job that fails releases nothing, and its ε is refunded. Amounts are
kept in micro-ε integers, so sums are exact.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from tongban.primitives.db import make_engine, transaction
from tongban.primitives.errors import Forbidden, StoreUnavailable

__all__ = ["BudgetExhausted", "StatisticsStore", "metadata"]

MICRO = 1_000_000

metadata = MetaData()

jobs = Table(
    "gateway_jobs",  # statistics and federated training jobs (ids st-… and fl-…)
    metadata,
    Column("id", String(40), primary_key=True),
    Column("requester", String(128), nullable=False, index=True),
    Column("created", Float, nullable=False),
    Column("status", String(16), nullable=False),
    Column("doc", Text, nullable=False),
)

budgets = Table(
    "privacy_budgets",
    metadata,
    Column("requester", String(128), primary_key=True),
    Column("spent_micro", BigInteger, nullable=False),
)

spends = Table(
    "privacy_spends",
    metadata,
    Column("job", String(40), primary_key=True),
    Column("requester", String(128), nullable=False, index=True),
    Column("epsilon_micro", BigInteger, nullable=False),
    Column("at", Float, nullable=False),
    Column("refunded", Boolean, nullable=False, default=False),
)


class BudgetExhausted(Forbidden):
    slug = "privacy-budget-exhausted"
    title = "The analyst's privacy budget does not cover this job"


class StatisticsStore:
    def __init__(
        self, engine_or_url: Engine | str, *, budget: float = 10.0, create: bool = False
    ) -> None:
        """``create``: bring the database to the gateway chain's head revision first (tests
        and the demo); a deployment's tables come from ``tongban db upgrade``."""
        self.engine = (
            make_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
        )
        self.budget_micro = round(budget * MICRO)
        if create:
            from tongban.migrations import GATEWAY, upgrade

            upgrade(self.engine, GATEWAY)

    def _begin(self) -> AbstractContextManager[Connection]:
        return transaction(self.engine, "the statistics store")

    # --- jobs ---------------------------------------------------------------------------

    def save(self, job_id: str, requester: str, status: str, doc: Mapping[str, Any]) -> None:
        """Insert or replace the job's document."""
        text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
        with self._begin() as conn:
            done = conn.execute(
                update(jobs).where(jobs.c.id == job_id).values(status=status, doc=text)
            )
            if done.rowcount == 0:
                conn.execute(
                    insert(jobs).values(
                        id=job_id,
                        requester=requester,
                        created=time.time(),
                        status=status,
                        doc=text,
                    )
                )

    def load(self, job_id: str, requester: str) -> dict[str, Any] | None:
        """The job's document if it exists and belongs to ``requester``."""
        with self._begin() as conn:
            row = conn.execute(
                select(jobs.c.doc).where(jobs.c.id == job_id, jobs.c.requester == requester)
            ).first()
        return None if row is None else dict(json.loads(row[0]))

    # --- privacy budget -----------------------------------------------------------------

    def spend(self, requester: str, job_id: str, epsilon: float) -> float:
        """Spend ``epsilon`` of ``requester``'s budget for ``job_id``, or raise
        :class:`BudgetExhausted`; returns what remains."""
        amount = round(epsilon * MICRO)
        try:
            with self._begin() as conn:
                conn.execute(insert(budgets).values(requester=requester, spent_micro=0))
        except StoreUnavailable as exc:
            if not isinstance(exc.__cause__, IntegrityError):  # the row already exists
                raise
        with self._begin() as conn:
            done = conn.execute(
                update(budgets)
                .where(
                    budgets.c.requester == requester,
                    budgets.c.spent_micro + amount <= self.budget_micro,
                )
                .values(spent_micro=budgets.c.spent_micro + amount)
            )
            if done.rowcount != 1:
                raise BudgetExhausted(
                    f"dp.epsilon: {epsilon} exceeds the remaining budget "
                    f"{self.remaining(requester, conn):g}"
                )
            conn.execute(
                insert(spends).values(
                    job=job_id,
                    requester=requester,
                    epsilon_micro=amount,
                    at=time.time(),
                    refunded=False,
                )
            )
            return self.remaining(requester, conn)

    def refund(self, job_id: str) -> None:
        """Give back the ε of a job that released nothing (at most once)."""
        with self._begin() as conn:
            row = conn.execute(
                select(spends.c.requester, spends.c.epsilon_micro).where(
                    spends.c.job == job_id, spends.c.refunded.is_(False)
                )
            ).first()
            if row is None:
                return
            marked = conn.execute(
                update(spends)
                .where(spends.c.job == job_id, spends.c.refunded.is_(False))
                .values(refunded=True)
            )
            if marked.rowcount == 1:
                conn.execute(
                    update(budgets)
                    .where(budgets.c.requester == row.requester)
                    .values(spent_micro=budgets.c.spent_micro - row.epsilon_micro)
                )

    def remaining(self, requester: str, conn: Connection | None = None) -> float:
        def read(c: Connection) -> int:
            spent = c.execute(
                select(budgets.c.spent_micro).where(budgets.c.requester == requester)
            ).scalar()
            return self.budget_micro - int(spent or 0)

        if conn is not None:
            return read(conn) / MICRO
        with self._begin() as c:
            return read(c) / MICRO

    @property
    def budget(self) -> float:
        return self.budget_micro / MICRO
