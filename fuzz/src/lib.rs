//! Property-based fuzz targets for wshub, kept out of the server crate so its dependencies stay
//! unchanged. The targets are the integration tests in `tests/`; `scripts/fuzz.sh` runs them for
//! a bounded time with fresh seeds. Every failure they find becomes a regression test in the
//! server crate (`tests/fuzz_regressions.rs`).
