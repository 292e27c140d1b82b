"""The runtime: the worker thread and its events, run directories, the built-in recipe
catalog, versions. No torch is imported here, not even inside a function: the lab's
UI thread uses all of it (import-linter checks this)."""
