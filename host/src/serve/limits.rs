//! The limits every connection and request of a server gets, and their flags.

use std::time::Duration;

/// Limits every connection and request of a server gets.
///
/// Also the servers' flags (`--header-timeout-s`, `--body-timeout-s`, `--max-body-bytes`,
/// `--write-timeout-s`, `--max-connections`):
/// their defaults are read from [`Default`], so that each value is written once.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeLimits {
    /// Whole request head (request line + headers) must arrive within this, counted from
    /// the connection's accept or the end of its previous answer: an idle keep-alive
    /// connection is closed after it too (hyper counts the wait and the head as one).
    #[arg(
        long = "header-timeout-s",
        value_name = "HEADER_TIMEOUT_S",
        help = "Seconds a client has to send a request's head (request line and headers), \
                counted from the connection's start or the end of its previous answer: an \
                idle keep-alive connection is closed after this too",
        value_parser = whole_seconds_from_one(),
        default_value = ServeLimits::default().header_read_timeout.as_secs().to_string()
    )]
    pub header_read_timeout: Duration,
    /// Whole request body must arrive within this once the head is read.
    #[arg(
        long = "body-timeout-s",
        value_name = "BODY_TIMEOUT_S",
        help = "Seconds a client has to send a request's body once its head has arrived \
                (slower clients get 408 and the connection is closed)",
        value_parser = whole_seconds_from_one(),
        default_value = ServeLimits::default().body_read_timeout.as_secs().to_string()
    )]
    pub body_read_timeout: Duration,
    /// Largest request body accepted, in bytes (callers pass a larger one for admin
    /// uploads).
    #[arg(
        long,
        help = "Largest request body in bytes (larger ones get 413 before they are read)",
        value_parser = bytes_from_a_kilobyte(),
        default_value_t = ServeLimits::default().max_body_bytes
    )]
    pub max_body_bytes: usize,
    /// Answer bytes must make progress within this: a client that stops reading (an SSE
    /// reader that stalls, a full receive window) is dropped, and what it asked for is
    /// cancelled, instead of holding its task and its generation for good.
    #[arg(
        long = "write-timeout-s",
        value_name = "WRITE_TIMEOUT_S",
        help = "Seconds an answer may wait for the client to read: a client that stops \
                reading for this long is dropped (and its generation cancelled)",
        value_parser = whole_seconds_from_one(),
        default_value = ServeLimits::default().write_timeout.as_secs().to_string()
    )]
    pub write_timeout: Duration,
    /// Connections served at once; past it the server stops accepting (new connections
    /// wait in the kernel's backlog) until one closes.
    #[arg(
        long,
        help = "Connections served at once; more wait to be accepted until one closes",
        value_parser = clap::value_parser!(u32).range(1..),
        default_value_t = ServeLimits::default().max_connections
    )]
    pub max_connections: u32,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_body_bytes: 4 << 20,
            write_timeout: Duration::from_secs(30),
            max_connections: 4096,
        }
    }
}

/// A byte count from a flag, raised to a kilobyte rather than refused: a smaller limit
/// would refuse nearly every request.
fn bytes_from_a_kilobyte() -> impl clap::builder::TypedValueParser<Value = usize> {
    clap::builder::TypedValueParser::map(|s: &str| s.parse::<usize>(), |n| n.max(1024))
}

/// A flag's whole seconds, raised to one: a zero deadline would drop every client.
fn whole_seconds_from_one() -> impl clap::builder::TypedValueParser<Value = Duration> {
    clap::builder::TypedValueParser::map(
        <u64 as clap::builder::ValueParserFactory>::value_parser(),
        |s| Duration::from_secs(s.max(1)),
    )
}
