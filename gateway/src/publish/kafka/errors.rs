//! Error classification: librdkafka error codes to stable class names and to [`PublishError`].
//!
//! Owns: which codes are final, which mean "wait" and which are retriable.
//! Must not: log, or decide HTTP statuses (respond maps [`PublishError`]).

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::publish::PublishError;

/// A stable snake_case name of a librdkafka error code, for logs and `Fatal(class)`:
/// `TopicAuthorizationFailed` → `topic_authorization_failed`.
pub fn error_class(code: RDKafkaErrorCode) -> String {
    let name = format!("{code:?}");
    let mut out = String::with_capacity(name.len() + 4);
    for (i, ch) in name.char_indices() {
        if ch.is_ascii_uppercase() {
            let prev_lower = name[..i].chars().last().is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit());
            let next_lower = name[i + 1..].chars().next().is_some_and(|n| n.is_ascii_lowercase());
            let prev_upper = name[..i].chars().last().is_some_and(|p| p.is_ascii_uppercase());
            if i > 0 && (prev_lower || (prev_upper && next_lower)) {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

/// Whether a broker or client error can never succeed by retrying the same event: the
/// broker refuses it (authorization, invalid topic or record, size) or the configuration is
/// wrong. librdkafka's own "retriable" flag exists only on `rd_kafka_error_t` (admin and
/// transactional calls), not on delivery reports, so this list stands in for it, as in Vector.
pub fn is_permanent(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::UnsupportedSASLMechanism
            | C::IllegalSASLState
            | C::SecurityDisabled
            | C::InvalidTopic
            | C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::MessageBatchTooLarge
            | C::InvalidRecord
            | C::InvalidTimestamp
            | C::InvalidRequiredAcks
            | C::InvalidRequest
            | C::InvalidConfig
            | C::PolicyViolation
            | C::UnsupportedForMessageFormat
            | C::UnsupportedVersion
            | C::UnsupportedCompressionType
            | C::InvalidArgument
            | C::BadMessage
            | C::BadCompression
    )
}

/// Maps a librdkafka error (on enqueue or in a delivery report) to a [`PublishError`].
pub fn classify(error: &KafkaError) -> PublishError {
    let Some(code) = error.rdkafka_error_code() else {
        // Not a broker answer (e.g. a NUL in a topic name): the event can never go out.
        return PublishError::Fatal("invalid_record".into());
    };
    match code {
        RDKafkaErrorCode::QueueFull => PublishError::QueueFull,
        RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::RequestTimedOut | RDKafkaErrorCode::OperationTimedOut => {
            PublishError::Timeout
        }
        // Purged: only when a producer is closed (replaced, or at exit) before delivery.
        RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight => {
            PublishError::Unavailable("kafka: the producer was closed before delivery".into())
        }
        c if is_permanent(c) => PublishError::Fatal(error_class(c)),
        // Everything else (leader elections, unknown topic, fatal idempotence state, transport
        // errors): retriable for the client; another attempt or another instance may succeed.
        c => PublishError::Unavailable(format!("kafka: {}", error_class(c))),
    }
}
