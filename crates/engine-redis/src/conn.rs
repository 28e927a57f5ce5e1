//! The command connection: redis-rs's `ConnectionManager`, which learns that Redis restarted
//! (or failed over) from the first command that fails and reconnects behind it, wrapped so that
//! such a command is sent again on the new connection instead of failing the caller (a publish
//! from the API, a result read, a worker's claim).
//!
//! Invariant: only a command that never reached Redis is repeated — its write found the
//! connection broken, refused or not connected. A command whose reply was lost (reset, EOF) may
//! have run and is not repeated: the caller sees the error, as before.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

/// Pauses before the repeats; the reconnect itself waits up to the manager's connection timeout.
const PAUSES: [Duration; 3] = [
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(250),
];

/// A command connection that repeats commands which never reached Redis.
#[derive(Clone)]
pub(crate) struct Conn(ConnectionManager);

impl Conn {
    pub(crate) fn new(manager: ConnectionManager) -> Self {
        Self(manager)
    }
}

/// True when the command could not have been sent: the connection was already broken when it
/// was written, or there was none.
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
    fn only_commands_that_never_left_are_repeated() {
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
