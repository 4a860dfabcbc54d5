//! The NBD protocol (pure parser) and the server.
