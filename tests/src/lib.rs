//! End-to-end tests live in `tests/tests/`; fixtures in `tests/fixtures/`.
