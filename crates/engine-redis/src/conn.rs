//! The command connection: redis-rs's `ConnectionManager`, which learns that Redis restarted
//! (or failed over) from the first command that fails and reconnects behind it, wrapped so that
//! such a command is sent again on the new connection instead of failing the caller (a publish
//! from the API, a result read, a worker's claim).
//!
//! What is repeated: a command that failed because writing to the connection failed (broken
//! pipe) or there was none (refused, not connected). That is the first command after Redis
//! restarted while the connection was idle, which never reached it. redis-rs reports a failed
//! write to the oldest request in flight, so under load the repeated command can, rarely, be
//! one written just before Redis died; if Redis ran it and died before replying, it runs twice,
//! as after kombu's publish retry. That is safe here: a second publish is a duplicate delivery
//! (at least once, as always), a second claim claims other messages (the first ones' leases run
//! out and they are redelivered), a second store or ack is fenced. A command whose reply was
//! lost (reset, EOF) is not repeated: the caller sees the error, as before.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

/// Pauses before the repeats; the reconnect itself waits up to the manager's connection timeout.
const PAUSES: [Duration; 3] = [
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(250),
];

/// A command connection that repeats commands whose write failed.
#[derive(Clone)]
pub(crate) struct Conn(ConnectionManager);

impl Conn {
    pub(crate) fn new(manager: ConnectionManager) -> Self {
        Self(manager)
    }
}

/// True when writing to the connection failed or there was no connection (see the module
/// documentation for what that says about the command).
pub(crate) fn unsent(e: &RedisError) -> bool {
    let Some(source) = std::error::Error::source(e) else {
        return false;
    };
    let io = source.downcast_ref::<std::io::Error>().or_else(|| {
        source
            .downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>()
            .and_then(|inner| inner.downcast_ref::<std::io::Error>())
    });
    io.is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::NotConnected
        )
    })
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            for pause in PAUSES {
                match self.0.req_packed_command(cmd).await {
                    Err(e) if unsent(&e) => tokio::time::sleep(pause).await,
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
            for pause in PAUSES {
                match self.0.req_packed_commands(pipeline, offset, count).await {
                    Err(e) if unsent(&e) => tokio::time::sleep(pause).await,
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
    fn only_failed_writes_and_missing_connections_are_repeated() {
        for kind in [
            ErrorKind::BrokenPipe,
            ErrorKind::ConnectionRefused,
            ErrorKind::NotConnected,
        ] {
            assert!(unsent(&RedisError::from(Error::from(kind))), "{kind:?}");
        }
        for kind in [
            ErrorKind::ConnectionReset,
            ErrorKind::UnexpectedEof,
            ErrorKind::TimedOut,
            ErrorKind::Other,
        ] {
            assert!(!unsent(&RedisError::from(Error::from(kind))), "{kind:?}");
        }
        let server: RedisError = (redis::ErrorKind::Client, "refused").into();
        assert!(!unsent(&server));
    }
}
