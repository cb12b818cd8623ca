//! The one place where what happened to an attempt is classified: the outcome the policy
//! is told, whether the policy's next choice is tried, and what the registry hears of the
//! worker. The attempt loop, the relay of whole answers and of event streams, and an
//! attempt dropped half-way all ask here, so the rules cannot drift apart.

use axum::http::StatusCode;
use locus_policy::Outcome;

/// What the router saw of an attempt.
pub(super) enum Seen<'e> {
    /// The worker answered with this status: a 5xx is retried; anything else is relayed,
    /// and once its body has arrived whole this status alone is its outcome.
    Answer(StatusCode),
    /// The request could not be sent, or no answer began within the read timeout.
    SendError(&'e reqwest::Error),
    /// An answer relayed whole broke off, or timed out, while its body was read.
    BodyError(&'e reqwest::Error),
    /// A relayed event stream's body was dropped: finished, cut, or left by the client.
    StreamEnd {
        /// The status the stream was answered with.
        status: u16,
        /// The worker's stream broke (a read error).
        broke: bool,
        /// The final event, with the request's counts, passed.
        counted: bool,
        /// The worker's stream ended, with or without its final event.
        ended: bool,
    },
    /// The attempt was dropped before it ended: the client went away while the router
    /// waited for the worker.
    Dropped,
}

/// What follows from what was seen.
pub(super) struct Verdict {
    /// What the policy is told. For a relayed answer (`retry` false) whose body is yet to
    /// come, what its status says if the body then arrives whole.
    pub(super) outcome: Outcome,
    /// Try the policy's next choice among the remaining workers; else the answer (if
    /// there is one) goes to the client.
    pub(super) retry: bool,
    /// Tell the registry the worker failed.
    pub(super) mark: Option<Mark>,
}

/// A failure the registry is told of.
pub(super) struct Mark {
    /// Mark the worker down at once: a refused connection is certain, so it is not left
    /// to the usual count of failures in a row.
    pub(super) at_once: bool,
    /// Why, for the log line when the worker goes down.
    pub(super) reason: String,
}

impl Mark {
    /// Failures in a row that mark the worker down, given the registry's `usual` number.
    pub(super) fn threshold(&self, usual: u32) -> u32 {
        if self.at_once { 1 } else { usual }
    }
}

impl Seen<'_> {
    /// The verdict on what was seen.
    pub(super) fn verdict(&self) -> Verdict {
        let ended = |outcome| Verdict { outcome, retry: false, mark: None };
        match *self {
            // Busy: another worker may have room, and a busy worker is not a failed one.
            Seen::Answer(StatusCode::SERVICE_UNAVAILABLE) => {
                Verdict { outcome: Outcome::Overloaded, retry: true, mark: None }
            }
            // A gateway's 502/504 says the worker behind it is unreachable. A 500 is one
            // request's failure: marking for it would let a client whose request fails
            // everywhere take every worker out; the health checks judge the worker.
            Seen::Answer(s @ (StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT)) => Verdict {
                outcome: Outcome::Failed,
                retry: true,
                mark: Some(Mark { at_once: false, reason: format!("{s} answer") }),
            },
            Seen::Answer(s) if s.is_server_error() => {
                Verdict { outcome: Outcome::Failed, retry: true, mark: None }
            }
            Seen::Answer(s) if s.is_success() => ended(Outcome::Ok),
            Seen::Answer(StatusCode::TOO_MANY_REQUESTS) => ended(Outcome::Overloaded),
            Seen::Answer(_) => ended(Outcome::Rejected),
            Seen::SendError(e) => Verdict {
                outcome: if e.is_timeout() { Outcome::Timeout } else { Outcome::Unreachable },
                retry: true,
                mark: Some(Mark { at_once: e.is_connect(), reason: e.to_string() }),
            },
            Seen::BodyError(e) => {
                ended(if e.is_timeout() { Outcome::Timeout } else { Outcome::Broken })
            }
            Seen::StreamEnd { status, broke, counted, ended: closed } => ended(if broke {
                Outcome::Broken
            } else if status == 429 {
                Outcome::Overloaded
            } else if status >= 300 {
                // A refusal sent as an event stream: unusual, but the status says it.
                Outcome::Rejected
            } else if counted {
                Outcome::Ok
            } else if closed {
                // The worker closed the stream without its final event.
                Outcome::Broken
            } else {
                // The client went away before the end.
                Outcome::Cancelled
            }),
            Seen::Dropped => ended(Outcome::Cancelled),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use locus_policy::Outcome;

    use super::Seen;

    #[test]
    fn only_a_5xx_is_retried_and_only_a_gateway_error_marks_the_worker() {
        let cases = [
            (200, Outcome::Ok, false, false),
            (204, Outcome::Ok, false, false),
            (400, Outcome::Rejected, false, false),
            (404, Outcome::Rejected, false, false),
            (429, Outcome::Overloaded, false, false),
            (500, Outcome::Failed, true, false),
            (502, Outcome::Failed, true, true),
            (504, Outcome::Failed, true, true),
            (503, Outcome::Overloaded, true, false),
        ];
        for (status, outcome, retry, marked) in cases {
            let v = Seen::Answer(StatusCode::from_u16(status).unwrap()).verdict();
            assert_eq!(
                (v.outcome, v.retry, v.mark.is_some()),
                (outcome, retry, marked),
                "{status}"
            );
            if let Some(m) = v.mark {
                assert_eq!(m.threshold(2), 2);
                assert!(m.reason.starts_with(&status.to_string()), "{}", m.reason);
            }
        }
    }

    #[test]
    fn a_streams_end_is_read_from_its_status_its_final_event_and_who_closed_it() {
        let end = |status, broke, counted, ended| {
            let v = Seen::StreamEnd { status, broke, counted, ended }.verdict();
            assert!(!v.retry && v.mark.is_none());
            v.outcome
        };
        assert_eq!(end(200, false, true, true), Outcome::Ok);
        assert_eq!(end(200, true, true, true), Outcome::Broken, "a read error wins");
        assert_eq!(end(200, false, false, true), Outcome::Broken, "closed without counts");
        assert_eq!(end(200, false, false, false), Outcome::Cancelled, "the client left");
        assert_eq!(end(429, false, false, true), Outcome::Overloaded);
        assert_eq!(end(400, false, true, true), Outcome::Rejected);
        assert_eq!(Seen::Dropped.verdict().outcome, Outcome::Cancelled);
    }
}
