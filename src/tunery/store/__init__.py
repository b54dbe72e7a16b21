"""The database: tables (models.py), engine and sessions (db.py), and small query functions per table."""
