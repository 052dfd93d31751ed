//! Every WebSocket close code graphex sends, in one place. Clients depend
//! on them: they are part of the wire contract.

/// The server is shutting down; reconnect elsewhere (RFC 6455 "going away").
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
/// Protocol error (async-graphql's refusal of a connection, which the
/// standard loop turns into [`CLOSE_FORBIDDEN`] when a hook refused).
pub(crate) const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// The server disconnected a channel while going on: reconnect (RFC 6455
/// "service restart").
pub(crate) const CLOSE_DISCONNECTED: u16 = 1012;
/// A standard-protocol client sent messages faster than they are taken.
pub(crate) const CLOSE_POLICY_VIOLATION: u16 = 1008;
/// Too many open channels: try again later (RFC 6455 "try again later").
pub(crate) const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
/// The client's outgoing queue overflowed (it stopped reading).
pub(crate) const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Changes of a subscribed stream may have been lost and history could not
/// repair the gap (issue 16): resume from the last cursor, or refetch.
pub(crate) const CLOSE_CURSOR_EXPIRED: u16 = 4010;

/// Close code: a message that is not valid for the protocol.
pub(crate) const CLOSE_BAD_REQUEST: u16 = 4400;
/// Close code: a subscribe before the connection was acknowledged; on the
/// two-channel socket, the token that opened it expired (reason `token
/// expired`): reconnect with a fresh token and resume with the cursor.
pub(crate) const CLOSE_UNAUTHORIZED: u16 = 4401;
/// Close code: [`crate::ConnectionHooks::on_connect`] refused the connection;
/// `graphql-transport-ws` connections closed by an expired token (`Forbidden:
/// token expired`) or a revocation (`Forbidden: revoked`); two-channel
/// sockets closed by a revocation (`revoked`).
pub(crate) const CLOSE_FORBIDDEN: u16 = 4403;
/// Close code: no `connection_init` within [`crate::ProtocolConfig::init_timeout`].
pub(crate) const CLOSE_INIT_TIMEOUT: u16 = 4408;
/// Close code: a subscribe reused the id of an operation still running.
pub(crate) const CLOSE_DUPLICATE_ID: u16 = 4409;
/// Close code: a second `connection_init` (sent by async-graphql).
pub(crate) const CLOSE_TOO_MANY_INITS: u16 = 4429;
