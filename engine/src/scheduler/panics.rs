//! A failed step as a message: an error or a caught panic becomes the text a failed
//! sequence ends with and the loop logs, so that one sequence's panic is handled like its
//! error and never ends the loop.

/// A step's outcome with its error or panic as a message.
pub(super) fn caught<T, E: std::fmt::Display>(
    r: std::thread::Result<Result<T, E>>,
) -> Result<T, String> {
    match r {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(e.to_string()),
        Err(p) => Err(panic_message(&*p)),
    }
}

/// The text of a caught panic's payload (a `&str` or a `String`, as `panic!` makes).
pub(super) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("panicked: {msg}")
}
