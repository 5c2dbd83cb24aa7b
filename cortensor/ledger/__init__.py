"""The PostgreSQL ledger: nodes, jobs, assignments, results, verdicts and reputation events.

`cortensor.ledger.models` declares the tables; `cortensor.ledger.migrate` creates the
database and applies the Alembic migrations in `db/migrations`.
"""
