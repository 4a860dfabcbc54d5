//! The on-disk volume header.
