//! Unit tests of the Kafka sink: error classes, delivery accounting, and a producer with no
//! broker (no cluster needed; `tests/kafka_mock.rs` runs against a mock cluster).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::accounting::RequestAcks;
use super::settings::{KafkaConfig, RecordKey};
use super::*;
use crate::publish::{OutEvent, PublishError, Publisher};

#[test]
fn classes_are_snake_case() {
    assert_eq!(error_class(RDKafkaErrorCode::TopicAuthorizationFailed), "topic_authorization_failed");
    assert_eq!(error_class(RDKafkaErrorCode::QueueFull), "queue_full");
    assert_eq!(error_class(RDKafkaErrorCode::ISRInsufficient), "isr_insufficient");
    assert_eq!(error_class(RDKafkaErrorCode::UnsupportedSASLMechanism), "unsupported_sasl_mechanism");
    assert_eq!(error_class(RDKafkaErrorCode::SSL), "ssl");
}

#[test]
fn errors_map_to_publish_errors() {
    let p = |c| classify(&KafkaError::MessageProduction(c));
    assert_eq!(p(RDKafkaErrorCode::QueueFull), PublishError::QueueFull);
    assert_eq!(p(RDKafkaErrorCode::MessageTimedOut), PublishError::Timeout);
    assert_eq!(p(RDKafkaErrorCode::RequestTimedOut), PublishError::Timeout);
    for (code, class) in [
        (RDKafkaErrorCode::TopicAuthorizationFailed, "topic_authorization_failed"),
        (RDKafkaErrorCode::ClusterAuthorizationFailed, "cluster_authorization_failed"),
        (RDKafkaErrorCode::InvalidTopic, "invalid_topic"),
        (RDKafkaErrorCode::MessageSizeTooLarge, "message_size_too_large"),
        (RDKafkaErrorCode::MessageBatchTooLarge, "message_batch_too_large"),
        (RDKafkaErrorCode::InvalidRecord, "invalid_record"),
        (RDKafkaErrorCode::UnsupportedCompressionType, "unsupported_compression_type"),
    ] {
        assert_eq!(p(code), PublishError::Fatal(class.into()), "{code:?}");
        assert!(!p(code).is_retriable());
    }
    for code in [
        RDKafkaErrorCode::NotLeaderForPartition,
        RDKafkaErrorCode::LeaderNotAvailable,
        RDKafkaErrorCode::UnknownTopicOrPartition,
        RDKafkaErrorCode::UnknownTopic,
        RDKafkaErrorCode::NotEnoughReplicas,
        RDKafkaErrorCode::BrokerTransportFailure,
        RDKafkaErrorCode::AllBrokersDown,
        RDKafkaErrorCode::Fatal,
        RDKafkaErrorCode::OutOfOrderSequenceNumber,
    ] {
        assert!(matches!(p(code), PublishError::Unavailable(_)), "{code:?} → {:?}", p(code));
        assert!(p(code).is_retriable());
    }
    assert!(matches!(p(RDKafkaErrorCode::PurgeQueue), PublishError::Unavailable(_)));
    assert!(matches!(classify(&KafkaError::Canceled), PublishError::Fatal(_)));
}

#[test]
fn acks_wake_once_every_event_has_settled() {
    let acks = RequestAcks::new(3);
    acks.settle(2, Ok(()));
    acks.settle(0, Err(PublishError::Timeout));
    acks.settle(1, Ok(()));
    // The enqueueing guard is still held: no wake-up yet.
    assert_eq!(acks.remaining.load(Ordering::Relaxed), 1);
    acks.release(1);
    assert_eq!(acks.remaining.load(Ordering::Relaxed), 0);
    assert_eq!(acks.results(&PublishError::QueueFull), vec![Err(PublishError::Timeout), Ok(()), Ok(())]);
}

#[tokio::test]
async fn a_wake_up_before_the_wait_is_not_lost() {
    let acks = Arc::new(RequestAcks::new(1));
    acks.settle(0, Ok(()));
    acks.release(1);
    tokio::time::timeout(Duration::from_secs(1), acks.done.notified()).await.unwrap();
}

#[test]
fn unsettled_events_get_the_given_error() {
    let acks = RequestAcks::new(3);
    acks.settle(0, Ok(()));
    acks.settle(2, Err(PublishError::QueueFull));
    let r = acks.results(&PublishError::QueueFull);
    assert_eq!(r, vec![Ok(()), Err(PublishError::QueueFull), Err(PublishError::QueueFull)]);
}

#[test]
fn pending_events_are_those_without_an_outcome() {
    let acks = RequestAcks::new(4);
    acks.settle(0, Ok(()));
    acks.settle(2, Err(PublishError::QueueFull));
    let (results, pending) = acks.results_and_pending(&PublishError::QueueFull);
    assert_eq!(
        results,
        vec![Ok(()), Err(PublishError::QueueFull), Err(PublishError::QueueFull), Err(PublishError::QueueFull)]
    );
    // 1 and 3 were enqueued and have no report yet: their outcome comes later.
    assert_eq!(pending, vec![1, 3]);
    acks.settle(3, Err(PublishError::Timeout));
    assert_eq!(acks.results_and_pending(&PublishError::QueueFull).1, vec![1]);
}

#[tokio::test]
async fn starts_without_a_broker_and_is_not_ready() {
    // Nothing listens on port 1: creation must still succeed, readiness must say why not,
    // and a publish must end with a retriable error within the message timeout.
    let mut properties: std::collections::BTreeMap<String, String> = [
        ("bootstrap.servers", "127.0.0.1:1"),
        ("message.timeout.ms", "300"),
        ("enable.idempotence", "true"),
        ("acks", "all"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    properties.insert("linger.ms".into(), "1".into());
    let config = KafkaConfig {
        brokers: "127.0.0.1:1".into(),
        message_timeout_ms: 300,
        max_message_bytes: 1_000_000,
        record_key: RecordKey::UserOrAnonymousId,
        properties,
    };
    let k = KafkaPublisher::new(&config).unwrap();
    let why = k.readiness().unwrap_err();
    // Which reason comes first is a race between creation and librdkafka's first failed
    // connect ("all brokers are down"); either way the instance must not be ready.
    assert!(why.contains("no broker metadata yet") || why.contains("all brokers are down"), "{why}");
    assert_eq!(k.max_event_bytes(), Some(1_000_000 - RECORD_OVERHEAD_BYTES));
    let ev = OutEvent {
        topic: "t".into(),
        key: Some("u".into()),
        event_type: crate::decode::EventType::Track,
        source_id: "s".into(),
        message_id: "m".into(),
        payload: b"{}".to_vec(),
        consent_header: None,
    };
    let started = Instant::now();
    let r = k.publish(vec![ev.clone(), ev]).await;
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(r.iter().all(|r| r.as_ref().is_err_and(PublishError::is_retriable)), "{r:?}");
}
