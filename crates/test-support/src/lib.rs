//! Test support: starts the local lab (or attaches to a running one) for integration tests.
