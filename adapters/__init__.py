"""Department adapters: stores, ingest validation, predicates, the HTTP service."""
