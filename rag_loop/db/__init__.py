"""SQL store: engine and session factory (db.engine), models (db.models), migrations."""
