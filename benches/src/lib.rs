//! Shared helpers for atrest's benches and side-by-side comparisons.
