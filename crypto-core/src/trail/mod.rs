//! The audit trail: one CloudTrail-shaped, hash-chained record per key-service call.
