//! The command connection: redis-rs's `ConnectionManager`, which learns that Redis restarted
//! (or failed over) from the first command that fails and reconnects behind it, wrapped so that
//! such a command is sent again on the new connection when that cannot do harm.
//!
//! What is repeated, up to three times: any command that failed because no connection could be
//! made (refused, not connected: it never reached Redis), and a read-only command (GET, MGET,
//! CONFIG GET, ...) that failed with a broken pipe. Nothing else: redis-rs reports a broken pipe
//! for every request in flight when a connection closes, including ones Redis may have run
//! before it went away (a graceful shutdown runs what it read, then exits without replying), so
//! a publish, claim or result write that fails that way is not sent again — its caller sees
//! `unavailable` as before (the worker retries its result writes, which are fenced; an API
//! publish answers 503 and the client may send again). A read right after a restart succeeds.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Arg, Cmd, Pipeline, RedisError, RedisFuture, Value};

/// Pauses before the repeats; the reconnect itself waits up to the manager's connection timeout.
const PAUSES: [Duration; 3] = [
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(250),
];

/// A command connection that sends a command again when that cannot do harm.
#[derive(Clone)]
pub(crate) struct Conn(ConnectionManager);

impl Conn {
    pub(crate) fn new(manager: ConnectionManager) -> Self {
        Self(manager)
    }
}

/// An error of the connection, not of the command: trying again after a reconnect may work.
pub(crate) fn transient(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// The io error kind inside a redis-rs error, if any.
fn io_kind(e: &RedisError) -> Option<std::io::ErrorKind> {
    let source = std::error::Error::source(e)?;
    source
        .downcast_ref::<std::io::Error>()
        .or_else(|| {
            source
                .downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>()
                .and_then(|inner| inner.downcast_ref::<std::io::Error>())
        })
        .map(std::io::Error::kind)
}

/// Commands that only read (or, like `CONFIG SET` of the same value, change nothing when run
/// twice): sent again after a broken pipe.
const REPEATABLE: &[&[u8]] = &[
    b"GET",
    b"MGET",
    b"EXISTS",
    b"HGET",
    b"HMGET",
    b"HGETALL",
    b"HLEN",
    b"LLEN",
    b"LRANGE",
    b"ZCARD",
    b"ZRANGE",
    b"ZRANGEBYSCORE",
    b"SMEMBERS",
    b"SCARD",
    b"XRANGE",
    b"XLEN",
    b"TYPE",
    b"TTL",
    b"PTTL",
    b"PING",
    b"INFO",
    b"CONFIG",
    b"PUBSUB",
    b"SCAN",
    b"TIME",
];

fn repeatable(cmd: &Cmd) -> bool {
    match cmd.args_iter().next() {
        Some(Arg::Simple(name)) => REPEATABLE.iter().any(|r| r.eq_ignore_ascii_case(name)),
        _ => false,
    }
}

/// Whether a command that failed with `e` is sent again (see the module documentation).
pub(crate) fn send_again(e: &RedisError, read_only: bool) -> bool {
    match io_kind(e) {
        Some(std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotConnected) => true,
        Some(std::io::ErrorKind::BrokenPipe) => read_only,
        _ => false,
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let read_only = repeatable(cmd);
            for pause in PAUSES {
                match self.0.req_packed_command(cmd).await {
                    Err(e) if send_again(&e, read_only) => tokio::time::sleep(pause).await,
                    other => return other,
                }
            }
            self.0.req_packed_command(cmd).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let read_only = pipeline.cmd_iter().all(repeatable);
            for pause in PAUSES {
                match self.0.req_packed_commands(pipeline, offset, count).await {
                    Err(e) if send_again(&e, read_only) => tokio::time::sleep(pause).await,
                    other => return other,
                }
            }
            self.0.req_packed_commands(pipeline, offset, count).await
        })
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn writes_are_sent_again_only_when_they_never_reached_redis() {
        let io = |kind| RedisError::from(Error::from(kind));
        for kind in [ErrorKind::ConnectionRefused, ErrorKind::NotConnected] {
            assert!(send_again(&io(kind), false), "{kind:?}");
            assert!(send_again(&io(kind), true), "{kind:?}");
        }
        // redis-rs reports a closed connection as a broken pipe to every request in flight.
        assert!(!send_again(&io(ErrorKind::BrokenPipe), false));
        assert!(send_again(&io(ErrorKind::BrokenPipe), true));
        for kind in [
            ErrorKind::ConnectionReset,
            ErrorKind::UnexpectedEof,
            ErrorKind::TimedOut,
            ErrorKind::Other,
        ] {
            assert!(!send_again(&io(kind), true), "{kind:?}");
        }
        let server: RedisError = (redis::ErrorKind::Client, "refused").into();
        assert!(!send_again(&server, true));
    }

    #[test]
    fn reads_are_repeatable_and_scripts_and_writes_are_not() {
        assert!(repeatable(&redis::cmd("GET")));
        assert!(repeatable(&redis::cmd("mget")));
        assert!(repeatable(&redis::cmd("CONFIG")));
        for w in ["EVALSHA", "EVAL", "LPUSH", "SET", "DEL", "PUBLISH", "ZADD"] {
            assert!(!repeatable(&redis::cmd(w)), "{w}");
        }
    }
}
