//! What the server writes on the error stream when an exec or attach ends.
//!
//! From `v4.channel.k8s.io` on (also `v4.base64.channel.k8s.io` and `v5.channel.k8s.io`),
//! the error stream carries one Kubernetes `Status` object as JSON; client-go reads the stream
//! to its end and decodes it, turning `NonZeroExitCodeReason` into an exit code. The older
//! protocols (`channel.k8s.io`, `v2.channel.k8s.io`, `v3.channel.k8s.io` and the unnamed
//! WebSocket protocol) carry the bare error message as text, and nothing on success.
//!
//! The JSON is byte-for-byte what the Kubernetes streaming library sends (checked against
//! captured CRI-O sessions): the fields come in the order `status`, `message`, `reason`,
//! `details`, `code`, empty ones are left out, and strings are escaped the way Go's
//! `encoding/json` does (`<`, `>`, `&`, U+2028 and U+2029 become `\u` escapes).

use std::io;

use serde::Serialize;

use crate::runtime::StreamError;

/// `reason` of the Status for a command that exited with a non-zero code.
pub const NON_ZERO_EXIT_CODE_REASON: &str = "NonZeroExitCode";
/// `reason` of the single cause that carries the exit code (as a decimal string).
pub const EXIT_CODE_CAUSE_TYPE: &str = "ExitCode";
/// `reason` of the Status for any other failure.
pub const INTERNAL_ERROR_REASON: &str = "InternalError";

/// How a protocol version reports the outcome on the error stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorFormat {
    /// `v4.channel.k8s.io` and later: a `Status` JSON object, also on success.
    Status,
    /// `channel.k8s.io`, `v2.channel.k8s.io`, `v3.channel.k8s.io` and the unnamed WebSocket
    /// protocol: the failure message as plain text; nothing on success.
    Text,
}

impl ErrorFormat {
    /// The format for a negotiated subprotocol name (SPDY `X-Stream-Protocol-Version` or
    /// WebSocket `Sec-WebSocket-Protocol`).
    pub fn for_protocol(protocol: &str) -> Self {
        match protocol {
            "v4.channel.k8s.io" | "v4.base64.channel.k8s.io" | "v5.channel.k8s.io" => Self::Status,
            _ => Self::Text,
        }
    }
}

/// The bytes for a successful exit (`{"status":"Success"}`), or `None` when the protocol
/// sends nothing on success.
pub fn success(format: ErrorFormat) -> Option<Vec<u8>> {
    match format {
        ErrorFormat::Status => Some(encode(&Status {
            status: "Success",
            ..Status::default()
        })),
        ErrorFormat::Text => None,
    }
}

/// The bytes for a command that exited with `code`: [`success`] for 0, otherwise the
/// `NonZeroExitCode` failure whose single `ExitCode` cause carries the code.
pub fn exit_status(format: ErrorFormat, code: i32) -> Option<Vec<u8>> {
    if code == 0 {
        return success(format);
    }
    let message = format!("command terminated with non-zero exit code: exit status {code}");
    let code_text = code.to_string();
    Some(match format {
        ErrorFormat::Status => encode(&Status {
            status: "Failure",
            message: &message,
            reason: NON_ZERO_EXIT_CODE_REASON,
            details: Some(Details {
                causes: vec![Cause {
                    reason: EXIT_CODE_CAUSE_TYPE,
                    message: &code_text,
                }],
            }),
            code: 0,
        }),
        ErrorFormat::Text => message.into_bytes(),
    })
}

/// A failure with only a message: `{"status":"Failure","message":"<message>"}`.
pub fn failure(format: ErrorFormat, message: &str) -> Vec<u8> {
    match format {
        ErrorFormat::Status => encode(&Status {
            status: "Failure",
            message,
            ..Status::default()
        }),
        ErrorFormat::Text => message.as_bytes().to_vec(),
    }
}

/// An internal error as the Kubernetes streaming server reports it:
/// `{"status":"Failure","message":"Internal error occurred: <error>","reason":"InternalError","code":500}`.
pub fn internal_error(format: ErrorFormat, error: &str) -> Vec<u8> {
    let message = format!("Internal error occurred: {error}");
    match format {
        ErrorFormat::Status => encode(&Status {
            status: "Failure",
            message: &message,
            reason: INTERNAL_ERROR_REASON,
            details: None,
            code: 500,
        }),
        ErrorFormat::Text => message.into_bytes(),
    }
}

/// The error-stream bytes for the outcome of [`StreamRuntime::exec`]: the exit status, or
/// an internal error `error executing command in container: <error>` (the wording of the
/// Kubernetes streaming server).
///
/// [`StreamRuntime::exec`]: crate::runtime::StreamRuntime::exec
pub fn exec_result(format: ErrorFormat, result: &Result<i32, StreamError>) -> Option<Vec<u8>> {
    match result {
        Ok(code) => exit_status(format, *code),
        Err(err) => Some(internal_error(
            format,
            &format!("error executing command in container: {err}"),
        )),
    }
}

/// The error-stream bytes for the outcome of [`StreamRuntime::attach`]: success, or an
/// internal error `error attaching to container: <error>`.
///
/// [`StreamRuntime::attach`]: crate::runtime::StreamRuntime::attach
pub fn attach_result(format: ErrorFormat, result: &Result<(), StreamError>) -> Option<Vec<u8>> {
    match result {
        Ok(()) => success(format),
        Err(err) => Some(internal_error(
            format,
            &format!("error attaching to container: {err}"),
        )),
    }
}

/// The subset of `metav1.Status` the streaming server uses, in its wire field order.
#[derive(Serialize, Default)]
struct Status<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    status: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details<'a>>,
    #[serde(skip_serializing_if = "is_zero")]
    code: i32,
}

#[derive(Serialize)]
struct Details<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    causes: Vec<Cause<'a>>,
}

/// `metav1.StatusCause`: its `Type` goes on the wire as `reason`.
#[derive(Serialize)]
struct Cause<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn encode(status: &Status<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoEscapes);
    // Serializing these plain structs into a Vec cannot fail.
    if status.serialize(&mut ser).is_err() {
        out.clear();
        out.extend_from_slice(br#"{"status":"Failure"}"#);
    }
    out
}

/// serde_json's compact output plus the extra escapes of Go's `encoding/json`.
struct GoEscapes;

impl serde_json::ser::Formatter for GoEscapes {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escape = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(escape.as_bytes())?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 176-byte Status of the exec-exit7-stderr capture (crictl → CRI-O).
    const EXIT_7: &[u8] = br#"{"status":"Failure","message":"command terminated with non-zero exit code: exit status 7","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"7"}]}}"#;

    #[test]
    fn success_matches_capture() {
        let bytes = success(ErrorFormat::Status).unwrap();
        assert_eq!(bytes, br#"{"status":"Success"}"#);
        assert_eq!(bytes.len(), 20);
        assert_eq!(exit_status(ErrorFormat::Status, 0).unwrap(), bytes);
    }

    #[test]
    fn exit_7_matches_capture() {
        assert_eq!(EXIT_7.len(), 176);
        assert_eq!(exit_status(ErrorFormat::Status, 7).unwrap(), EXIT_7);
    }

    #[test]
    fn exit_codes_other_than_7() {
        let bytes = exit_status(ErrorFormat::Status, 137).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains(
            r#""message":"command terminated with non-zero exit code: exit status 137""#
        ));
        assert!(text.contains(r#"{"reason":"ExitCode","message":"137"}"#));
    }

    #[test]
    fn generic_failure() {
        assert_eq!(
            failure(ErrorFormat::Status, "container \"abc\" is not running"),
            br#"{"status":"Failure","message":"container \"abc\" is not running"}"#
        );
    }

    #[test]
    fn internal_error_has_reason_and_code() {
        assert_eq!(
            internal_error(ErrorFormat::Status, "boom"),
            br#"{"status":"Failure","message":"Internal error occurred: boom","reason":"InternalError","code":500}"#
        );
    }

    #[test]
    fn go_escapes() {
        assert_eq!(
            failure(ErrorFormat::Status, "a<b>&c\u{2028}\n\"\\"),
            br#"{"status":"Failure","message":"a\u003cb\u003e\u0026c\u2028\n\"\\"}"#
        );
    }

    #[test]
    fn text_format_for_old_protocols() {
        assert_eq!(
            ErrorFormat::for_protocol("channel.k8s.io"),
            ErrorFormat::Text
        );
        assert_eq!(
            ErrorFormat::for_protocol("v2.channel.k8s.io"),
            ErrorFormat::Text
        );
        assert_eq!(
            ErrorFormat::for_protocol("v3.channel.k8s.io"),
            ErrorFormat::Text
        );
        assert_eq!(
            ErrorFormat::for_protocol("base64.channel.k8s.io"),
            ErrorFormat::Text
        );
        assert_eq!(ErrorFormat::for_protocol(""), ErrorFormat::Text);
        assert_eq!(
            ErrorFormat::for_protocol("v4.channel.k8s.io"),
            ErrorFormat::Status
        );
        assert_eq!(
            ErrorFormat::for_protocol("v4.base64.channel.k8s.io"),
            ErrorFormat::Status
        );
        assert_eq!(
            ErrorFormat::for_protocol("v5.channel.k8s.io"),
            ErrorFormat::Status
        );

        assert_eq!(success(ErrorFormat::Text), None);
        assert_eq!(exit_status(ErrorFormat::Text, 0), None);
        assert_eq!(
            exit_status(ErrorFormat::Text, 7).unwrap(),
            b"command terminated with non-zero exit code: exit status 7"
        );
        assert_eq!(failure(ErrorFormat::Text, "gone"), b"gone");
    }

    #[test]
    fn runtime_results() {
        let gone = StreamError::NotFound("container \"c1\" not found".into());
        assert_eq!(
            exec_result(ErrorFormat::Status, &Err(gone.clone())).unwrap(),
            br#"{"status":"Failure","message":"Internal error occurred: error executing command in container: container \"c1\" not found","reason":"InternalError","code":500}"#
        );
        assert_eq!(exec_result(ErrorFormat::Status, &Ok(7)).unwrap(), EXIT_7);
        assert_eq!(
            attach_result(ErrorFormat::Status, &Ok(())).unwrap(),
            br#"{"status":"Success"}"#
        );
        assert_eq!(
            attach_result(ErrorFormat::Text, &Err(gone)).unwrap(),
            b"Internal error occurred: error attaching to container: container \"c1\" not found"
        );
    }
}
