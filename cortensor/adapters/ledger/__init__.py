"""The PostgreSQL ledger: nodes, jobs, assignments, results, verdicts and reputation events.

`tables` declares the tables; `migrate` creates the
database and applies the Alembic migrations in `db/migrations`.
"""
