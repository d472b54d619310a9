//! shoal-suite: end-to-end tests, examples and benches.
